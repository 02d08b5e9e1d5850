"""A tiny stand-in model for the runner and CLI tests: the anomaly map is the distance to the mean normal image."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ad_fast.data import resize_image, to_image_batch
from ad_fast.models import Detector, register_model
from ad_fast.results import AnomalyResult


@dataclass(frozen=True)
class MeanDistanceConfig:
    size: int = 64


@register_model("mean_distance")
class MeanDistanceModel(Detector):
    """Scores each pixel by |image - mean training image| (channel mean), smoothed by a 5x5 box; score = map max."""

    Config = MeanDistanceConfig

    def __init__(self, size: int = 64):
        super().__init__()
        self.config = MeanDistanceConfig(size)
        self.register_buffer("mean", torch.zeros(0))
        self.fit_calls = 0

    def _fit(self, dataset) -> None:
        size = self.config.size
        total, count = torch.zeros(3, size, size), 0
        for batch in dataset.batches(8):
            total += resize_image(batch.image, size).sum(0)
            count += len(batch.image)
        self.mean = total / count
        self.fit_calls += 1

    def _predict_batch(self, items) -> AnomalyResult:
        if not self.mean.numel():
            raise RuntimeError("MeanDistanceModel: call fit() first")
        tensors, _ = to_image_batch(items)
        batch = torch.stack([resize_image(t, self.config.size) for t in tensors])
        amap = (batch - self.mean).abs().mean(1, keepdim=True)
        amap = F.avg_pool2d(amap, 5, stride=1, padding=2, count_include_pad=False)
        return AnomalyResult(amap, amap.flatten(1).amax(1))

    def _state(self):
        return {"mean": self.mean}, {}

    def _restore(self, tensors, state, mmap) -> None:
        self.mean = tensors["mean"]
