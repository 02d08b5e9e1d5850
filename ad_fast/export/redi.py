"""ReDi's graph: HOG input map (through the HOG op's reference math), prompt retrieval from the embedded prompt bank,
the recover network, the discriminate network and the summed cosine map with its blur and maximum — ``predict``.

Only the HOG input map is exportable: the Sobel / Roberts / Canny ablation maps are OpenCV calls outside PyTorch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ..deploy.metadata import Preprocess
from ..models.components.imagenet import IMAGENET_MEAN, IMAGENET_STD
from ..ops import anomaly_map
from .graph import MethodGraph
from .nearest import NearestCosine

if TYPE_CHECKING:
    from ..models.redi import ReDi


class ReDiGraph(nn.Module):
    """``images [B, 3, S, S]`` in [0, 1] → ``(anomaly_map [B, 1, S, S], pred_score [B])``."""

    def __init__(self, model: "ReDi") -> None:
        super().__init__()
        self.model = model
        if model.uses_prompt:
            self.register_buffer("prompt_images", model.prompt_images.detach().cpu())
            self.nearest = NearestCosine(model.prompt_features)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        model = self.model
        prompt = None
        if model.uses_prompt:
            index = self.nearest(model.backbone.pooled(images))
            prompt = self.prompt_images[index].float() / 127.5 - 1.0  # as ReDi.prompts
        y = model.recover(model.generate_map(images), prompt)
        feats_x, feats_y = model.feature_pair(images, y)
        return anomaly_map(feats_x, feats_y, model.config.img_size, metric="cosine", reduce="sum",
                           blur_sigma=model.config.blur_sigma or None, return_score=True)


def build(model: "ReDi") -> MethodGraph:
    ready = model.prompt_features.shape[0] > 0 if model.uses_prompt else bool(model.trained_stages)
    if not ready:
        raise RuntimeError("ReDi: call fit() or from_pretrained() before export()")
    if model.config.input_map != "hog":
        raise ValueError(f"input_map: only 'hog' is exportable (the {model.config.input_map!r} map is computed with "
                         "OpenCV, outside the graph)")
    size = model.config.img_size
    preprocess = Preprocess(size=(size, size), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    notes = (f"Prompt retrieved in the graph from the {model.prompt_images.shape[0]} embedded training images."
             if model.uses_prompt else "Prompt-free ReDi.")
    return MethodGraph(ReDiGraph(model), ("images",), preprocess, notes)
