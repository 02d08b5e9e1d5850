"""OneNIP's graph: frozen backbone, prompt choice, reconstruction, refiner, the combined map and its image score.

With a prompt pool (``fit`` / ``set_prompts``) the pool's features are embedded as constants and each image's prompt
is retrieved in the graph, by the cosine similarity of spatially averaged features as ``predict`` does (the whole
pool: ``predict(label=...)``'s class filter is not in the graph). Without a pool the graph takes a ``prompt`` input,
one normal image per query. ``kappa`` and ``alpha`` are constants of the graph.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ..deploy.metadata import Preprocess
from ..models.onenip import scoring
from ..models.components.imagenet import IMAGENET_MEAN, IMAGENET_STD
from .graph import MethodGraph
from .nearest import NearestCosine

if TYPE_CHECKING:
    from ..models.onenip import OneNIP


class OneNIPGraph(nn.Module):
    """``images [B, 3, S, S]`` (and, without a pool, ``prompt [B, 3, S, S]``) in [0, 1] →
    ``(anomaly_map [B, 1, S, S], pred_score [B])``."""

    def __init__(self, model: "OneNIP") -> None:
        super().__init__()
        self.model, self.kappa = model, float(model.kappa)
        self.pool = None
        if model.prompt_labels:
            features = model.prompt_features.detach().to(torch.float32)
            self.register_buffer("pool_features", features)
            self.pool = NearestCosine(features.mean(dim=(2, 3)))

    def forward(self, images: torch.Tensor, prompt: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        model = self.model
        features = model.extract(images)
        if self.pool is None:
            prompts = model.extract(prompt)
        else:
            prompts = self.pool_features[self.pool(features.mean(dim=(2, 3)))]
        rec_map, probability = model.score_maps(features, prompts)
        amap = scoring.combine(rec_map, probability, model.alpha, self.kappa)
        return amap, scoring.image_score(amap, model.avgpool_size)


def build(model: "OneNIP") -> MethodGraph:
    if model.kappa is None:
        raise RuntimeError("OneNIP: the model is not calibrated (kappa); fit() it or call calibrate() before export()")
    size = model.img_size
    inputs = ("images",) if model.prompt_labels else ("images", "prompt")
    notes = (f"Prompt retrieved in the graph from the {len(model.prompt_labels)} embedded pool prompts (no class "
             "filter)." if model.prompt_labels else "One normal prompt image per query (the model had no prompt pool).")
    preprocess = Preprocess(size=(size, size), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    return MethodGraph(OneNIPGraph(model), inputs, preprocess, notes)
