"""DMAD's graph, both modes: patch encoder, banks as initializers, nearest neighbours as MatMul + TopK, the map,
its blur and the image score — ``DMAD.predict`` for images at ``image_size``.

``memory_bank`` mode: patch score = L2 distance to the nearest normal-bank row. ``dmad`` mode: -Ψ(o) of the
knowledge-enhanced representation built from both banks' nearest rows. The map is the patch grid upsampled
bilinearly to ``image_size`` and Gaussian-blurred (reflect border); the score is its maximum or the mean of the
top-``top_k`` patch scores, as the model is configured. PyTorch's ``predict`` upsamples straight to the input's own
size when every input of a call shares one; the graph's maps are at ``image_size`` (resize them afterwards).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ..deploy.metadata import Preprocess
from ..ops import anomaly_map, gaussian_blur
from .graph import MethodGraph
from .nearest import NearestL2

_BANK_DTYPES = {"float32": torch.float32, "float16": torch.float16}

if TYPE_CHECKING:
    from ..models.dmad import DMAD


class DMADGraph(nn.Module):
    """``images [B, 3, S, S]`` in [0, 1] → ``(anomaly_map [B, 1, S, S], pred_score [B])``."""

    def __init__(self, model: "DMAD", bank_dtype: torch.dtype) -> None:
        super().__init__()
        self.encoder, self.mode = model.encoder, model.mode
        self.normal = NearestL2(model.normal_bank.rows, bank_dtype)
        if self.mode == "dmad":
            self.abnormal = NearestL2(model.abnormal_bank.rows, bank_dtype)
            self.enhancer, self.mapper = model.enhancer, model.mapper
        cfg = model.config
        self.size, self.sigma = model.input_size, float(cfg.blur_sigma)
        self.image_score = cfg.image_score or ("max" if self.mode == "memory_bank" else "topk_mean")
        self.top_k = int(cfg.top_k)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, grid = self.encoder(images)
        distance, index_n = self.normal(q)
        if self.mode == "memory_bank":
            patch = distance
        else:
            _, index_a = self.abnormal(q)
            o = self.enhancer(q, self.normal.gather(index_n), self.abnormal.gather(index_a))
            patch = -self.mapper(o.reshape(-1, o.shape[-1])).reshape(q.shape[0], q.shape[1])
        patch = patch.reshape(q.shape[0], 1, *grid).float()
        if self.mode == "memory_bank":
            amap, score = anomaly_map(patch, torch.zeros_like(patch), self.size, metric="l2", blur_sigma=self.sigma,
                                      return_score=True)
        else:
            amap = gaussian_blur(F.interpolate(patch, size=self.size, mode="bilinear", align_corners=False), self.sigma)
            score = amap.flatten(1).amax(1)
        if self.image_score == "topk_mean":
            score = patch.flatten(1).topk(min(self.top_k, grid[0] * grid[1]), dim=1).values.mean(1)
        return amap, score


def build(model: "DMAD", bank_dtype: str | None = None) -> MethodGraph:
    """``bank_dtype``: ``"float32"`` or ``"float16"`` storage of the banks in the file (default: the model's)."""
    if model.normal_bank is None or (model.mode == "dmad" and model.mapper is None):
        raise RuntimeError("DMAD: call fit() or load() before export()")
    if bank_dtype is None:
        dtype = model.normal_bank.rows.dtype
    elif bank_dtype in _BANK_DTYPES:
        dtype = _BANK_DTYPES[bank_dtype]
    else:
        raise ValueError(f"bank_dtype: expected None or one of {tuple(_BANK_DTYPES)}, got {bank_dtype!r}")
    with torch.no_grad():  # fills the encoder's cached aggregation weights, which the trace then reads as constants
        model.encoder(torch.zeros(1, 3, *model.input_size, device=model.device))
    encoder = model.encoder
    preprocess = Preprocess(size=model.input_size, mean=encoder.mean.flatten().tolist(),
                            std=encoder.std.flatten().tolist())
    return MethodGraph(DMADGraph(model, dtype), ("images",), preprocess,
                       notes=f"DMAD mode={model.mode}; maps at image_size {model.input_size} (PyTorch's predict maps "
                             "inputs of one shared size at that size).")
