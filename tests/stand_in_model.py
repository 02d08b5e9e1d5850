"""A tiny stand-in model for the runner and CLI tests: the anomaly map is the distance to the mean normal image."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ad_fast.data import resize_image, to_image_batch
from ad_fast.decision import Decision
from ad_fast.models import register_model
from ad_fast.results import AnomalyResult


@register_model("mean_distance")
class MeanDistanceModel:
    """Scores each pixel by |image - mean training image| (channel mean), smoothed by a 5x5 box; score = map max."""

    def __init__(self, size: int = 64):
        self.size = size
        self.mean: torch.Tensor | None = None
        self.fit_calls = 0
        self.decision: Decision | None = None

    def fit(self, dataset) -> "MeanDistanceModel":
        total, count = torch.zeros(3, self.size, self.size), 0
        for batch in dataset.batches(8):
            total += resize_image(batch.image, self.size).sum(0)
            count += len(batch.image)
        self.mean = total / count
        self.fit_calls += 1
        return self

    def predict(self, images) -> AnomalyResult:
        result = self.raw_predict(images)
        return result if self.decision is None else self.decision.apply(result)

    def raw_predict(self, images) -> AnomalyResult:
        if self.mean is None:
            raise RuntimeError("MeanDistanceModel: call fit() first")
        tensors, _ = to_image_batch(images)
        batch = torch.stack([resize_image(t, self.size) for t in tensors])
        amap = (batch - self.mean).abs().mean(1, keepdim=True)
        amap = F.avg_pool2d(amap, 5, stride=1, padding=2, count_include_pad=False)
        return AnomalyResult(amap, amap.flatten(1).amax(1))

    def save(self, path) -> None:
        decision = None if self.decision is None else self.decision.to_dict()
        torch.save({"method": "mean_distance", "size": self.size, "mean": self.mean, "decision": decision}, path)

    @classmethod
    def load(cls, path) -> "MeanDistanceModel":
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = cls(state["size"])
        model.mean = state["mean"]
        model.decision = None if state.get("decision") is None else Decision.from_dict(state["decision"])
        return model
