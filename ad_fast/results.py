"""The one result type every ad_fast model returns from ``predict``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F


@dataclass
class AnomalyResult:
    """Predictions for a batch of B images.

    Attributes:
        anomaly_map (Tensor[B, 1, H, W], float32): per-pixel anomaly score (higher = more anomalous).
        pred_score (Tensor[B], float32): image-level anomaly score.
        pred_mask (Tensor[B, 1, H, W], bool) or None: ``anomaly_map >= threshold`` when a threshold is known.
        pred_label (Tensor[B], bool) or None: ``pred_score >= image threshold`` when one is known.
        extras (dict): method-specific intermediate outputs (e.g. the prompt index a query used).
        raw_score (Tensor[B]) or None: the method's own image score when ``pred_score`` is normalised
            (see :class:`ad_fast.decision.Decision`).
        raw_map (Tensor[B, 1, H, W]) or None: the method's own map when ``anomaly_map`` is normalised.
    """

    anomaly_map: torch.Tensor
    pred_score: torch.Tensor
    pred_mask: torch.Tensor | None = None
    pred_label: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    raw_score: torch.Tensor | None = None
    raw_map: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.anomaly_map.shape[0])

    def threshold(self, pixel_threshold: float, image_threshold: float | None = None) -> "AnomalyResult":
        """Fill ``pred_mask`` (and ``pred_label``) from thresholds; returns ``self``."""
        self.pred_mask = self.anomaly_map >= pixel_threshold
        if image_threshold is not None:
            self.pred_label = self.pred_score >= image_threshold
        return self

    def resized(self, size: tuple[int, int]) -> "AnomalyResult":
        """A copy whose maps are bilinearly resized to ``size`` (H, W); scores are unchanged."""
        amap = F.interpolate(self.anomaly_map, size=size, mode="bilinear", align_corners=False)
        mask = None
        if self.pred_mask is not None:
            mask = F.interpolate(self.pred_mask.float(), size=size, mode="nearest") > 0.5
        raw_map = None
        if self.raw_map is not None:
            raw_map = F.interpolate(self.raw_map, size=size, mode="bilinear", align_corners=False)
        return AnomalyResult(amap, self.pred_score, mask, self.pred_label, dict(self.extras), self.raw_score, raw_map)

    def to_numpy(self) -> dict[str, Any]:
        """The fields as NumPy arrays (``None`` where unset)."""
        out: dict[str, Any] = {}
        for name in ("anomaly_map", "pred_score", "pred_mask", "pred_label", "raw_score", "raw_map"):
            value = getattr(self, name)
            out[name] = None if value is None else value.detach().cpu().numpy()
        return out
