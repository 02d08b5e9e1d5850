"""Feature alignment module (FAM): aligns prompt features to the query at one encoder level, then fuses."""

from __future__ import annotations

import torch
from torch import nn

from ... import ops

ALIGNMENTS = ("soft", "hard", "none")
FUSIONS = ("cat", "add", "absdiff")


class FeatureAlignment(nn.Module):
    """One level of the FAM.

    ``soft``: ``aligned(i) = sum_p softmax_p(<R q(i), R p(p)>) p(p)`` with ``R`` a 1x1 conv (C → C/2, bias) shared by
    query and prompt, no scaling (``ad_fast.ops.soft_align``); ``hard``: the prompt feature at the most
    cosine-similar reduced position (``ad_fast.ops.hard_align``); ``none``: the prompt feature itself.
    Fusion: ``cat`` → ``[query, aligned]`` (2C channels, the release), ``add`` → sum, ``absdiff`` → ``|query - aligned|``.
    """

    def __init__(self, channels: int, alignment: str = "soft", fusion: str = "cat"):
        super().__init__()
        if alignment not in ALIGNMENTS:
            raise ValueError(f"alignment: expected one of {ALIGNMENTS}, got {alignment!r}")
        if fusion not in FUSIONS:
            raise ValueError(f"fusion: expected one of {FUSIONS}, got {fusion!r}")
        self.alignment, self.fusion = alignment, fusion
        self.reduction = nn.Conv2d(channels, channels // 2, 1) if alignment != "none" else None

    @property
    def out_channels_factor(self) -> int:
        return 2 if self.fusion == "cat" else 1

    def keys(self, prompt: torch.Tensor) -> torch.Tensor | None:
        """Reduced prompt features ``[..., C/2, h, w]`` for ``prompt [..., C, h, w]`` (None without alignment)."""
        if self.reduction is None:
            return None
        return self.reduction(prompt.flatten(0, -4)).unflatten(0, prompt.shape[:-3])

    def forward(self, query: torch.Tensor, prompt: torch.Tensor, prompt_keys: torch.Tensor | None = None) -> torch.Tensor:
        """query ``[B, C, h, w]``; prompt ``[B, C, h', w']`` (or ``[B, P, C, h', w']``: one attention over all P
        prompts; averaged with ``none``); ``prompt_keys`` = ``self.keys(prompt)`` when cached → fused ``[B, C or 2C, h, w]``."""
        if self.alignment == "none":
            aligned = prompt.mean(dim=1) if prompt.dim() == 5 else prompt
        else:
            keys = self.keys(prompt) if prompt_keys is None else prompt_keys
            align = ops.soft_align if self.alignment == "soft" else ops.hard_align
            aligned = align(self.reduction(query), keys, prompt)
        if self.fusion == "cat":
            return torch.cat([query, aligned], dim=1)
        if self.fusion == "add":
            return query + aligned
        return (query - aligned).abs()
