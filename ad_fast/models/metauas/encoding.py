"""Encoded prompt images, and the image score of a map."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def image_scores(maps: torch.Tensor) -> torch.Tensor:
    """The image score of each map, its maximum: ``[B, 1, S, S]`` → ``[B]``."""
    return maps.flatten(1).amax(dim=1)


@dataclass
class PromptEncoding:
    """Encoded prompt images, reusable for any number of queries.

    Attributes:
        features (list[Tensor[P, C_l, h_l, w_l]]): encoder features of levels 3, 4, 5 (the FAM's values).
        pooled (Tensor[P, 448]): global average of level 5 (the retrieval feature of MetaUAS★).
    """

    features: list[torch.Tensor]
    pooled: torch.Tensor

    def __len__(self) -> int:
        return int(self.pooled.shape[0])

    def select(self, index: torch.Tensor) -> "PromptEncoding":
        """The prompts at ``index`` (any integer shape ``S``): features ``[*S, C, h, w]``, pooled ``[*S, 448]``."""
        return PromptEncoding([f[index] for f in self.features], self.pooled[index])

    def to(self, device: torch.device) -> "PromptEncoding":
        return PromptEncoding([f.to(device) for f in self.features], self.pooled.to(device))
