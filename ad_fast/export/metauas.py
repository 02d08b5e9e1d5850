"""MetaUAS's graph: ``(query, prompt)`` images in [0, 1] → the release's anomaly map and its maximum.

The graph is ``MetaUAS.forward`` (ImageNet normalisation, encoder, feature alignment, decoder, sigmoid) plus the
image score of :meth:`MetaUAS.predict_pairs`, one prompt per query. Soft and hard alignment are traced through
their reference math. The side S defaults to the model's ``img_size`` and can be any multiple of 32.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ..deploy.metadata import Preprocess
from ..models.components.imagenet import IMAGENET_MEAN, IMAGENET_STD
from ..models.metauas.config import check_img_size
from ..models.metauas.encoding import image_scores
from .graph import MethodGraph

if TYPE_CHECKING:
    from ..models.metauas import MetaUAS


class MetaUASGraph(nn.Module):
    """``(query [B, 3, S, S], prompt [B, 3, S, S])`` → ``(anomaly_map [B, 1, S, S], pred_score [B])``."""

    def __init__(self, model: "MetaUAS") -> None:
        super().__init__()
        self.model = model

    def forward(self, query: torch.Tensor, prompt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = self.model(query, prompt)
        return maps, image_scores(maps)


def build(model: "MetaUAS", img_size: int | None = None) -> MethodGraph:
    size = model.img_size if img_size is None else img_size
    check_img_size(size)
    preprocess = Preprocess(size=(size, size), align_corners=True, antialias=False, clamp=False,
                            mean=IMAGENET_MEAN, std=IMAGENET_STD)
    return MethodGraph(MetaUASGraph(model), ("query", "prompt"), preprocess,
                       notes="One normal prompt per query (the prompt pool's retrieval is not in the graph).")
