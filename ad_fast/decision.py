"""The OK/NG decision: learned raw thresholds and the normalisation that puts them at 0.5.

A :class:`Decision` holds, for the image score and for the anomaly map, the raw threshold and the raw range seen on
the calibration set. Normalisation is anomalib's min-max-around-threshold rule::

    normalised = clip((raw - threshold) / (high - low) + 0.5, 0, 1)

so the learned threshold maps to exactly 0.5 for every method and category, the mapping is monotonic, and
``pred_label = normalised_score >= 0.5`` equals ``raw_score >= threshold``. The same arithmetic is what an exported
graph embeds, so the runtime and PyTorch agree.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Decision:
    """Raw thresholds and normalisation ranges for one fitted model.

    Attributes:
        image_threshold: raw image score at and above which an image is NG.
        pixel_threshold: raw map value at and above which a pixel is defective.
        image_low, image_high: raw image-score range on the calibration set (``image_high > image_low``).
        pixel_low, pixel_high: raw map-value range on the calibration set (``pixel_high > pixel_low``).
        source: how the thresholds were chosen (e.g. ``"normal-quantile"``, ``"f1-labelled"``, ``"user"``).
    """

    image_threshold: float
    pixel_threshold: float
    image_low: float
    image_high: float
    pixel_low: float
    pixel_high: float
    source: str = "user"

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name == "source":
                if not isinstance(self.source, str):
                    raise TypeError(f"source: expected a str, got {type(self.source).__name__}")
                continue
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{f.name}: expected a finite number, got {value!r}")
            object.__setattr__(self, f.name, float(value))
        for level in ("image", "pixel"):
            low, high = getattr(self, f"{level}_low"), getattr(self, f"{level}_high")
            if not high > low:
                raise ValueError(f"{level}_high: expected > {level}_low ({low}), got {high}")

    # --- the mapping -------------------------------------------------------------------------------------------

    def normalise_score(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw image scores ``Tensor[B]`` -> normalised scores in [0, 1], threshold at 0.5."""
        return _normalise(raw, self.image_threshold, self.image_low, self.image_high)

    def normalise_map(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw anomaly maps ``Tensor[B, 1, H, W]`` -> normalised maps in [0, 1], threshold at 0.5."""
        return _normalise(raw, self.pixel_threshold, self.pixel_low, self.pixel_high)

    def apply(self, result: "AnomalyResult") -> "AnomalyResult":
        """The decided result: normalised ``pred_score`` / ``anomaly_map``, ``pred_label`` and ``pred_mask``
        filled, the raw values kept in ``raw_score`` / ``raw_map``. ``result`` is not modified."""
        from .results import AnomalyResult

        raw_score = result.raw_score if result.raw_score is not None else result.pred_score
        raw_map = result.raw_map if result.raw_map is not None else result.anomaly_map
        score = self.normalise_score(raw_score)
        amap = self.normalise_map(raw_map)
        return AnomalyResult(anomaly_map=amap, pred_score=score, pred_mask=amap >= 0.5, pred_label=score >= 0.5,
                             extras=dict(result.extras), raw_score=raw_score, raw_map=raw_map)

    # --- storage -----------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (stored in the model file's metadata under ``"decision"``)."""
        return {"format_version": FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> "Decision":
        """Inverse of :meth:`to_dict`; unknown or missing keys raise ``ValueError`` naming them."""
        if not isinstance(state, dict):
            raise TypeError(f"decision: expected a dict, got {type(state).__name__}")
        state = dict(state)
        version = state.pop("format_version", None)
        if version != FORMAT_VERSION:
            raise ValueError(f"decision: format_version {version!r} is not supported (expected {FORMAT_VERSION})")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(state) - names)
        if unknown:
            raise ValueError(f"decision: unknown key(s) {unknown}")
        missing = sorted(f.name for f in fields(cls) if f.name not in state and f.name != "source")
        if missing:
            raise ValueError(f"decision: missing key(s) {missing}")
        return cls(**state)


def _normalise(raw: torch.Tensor, threshold: float, low: float, high: float) -> torch.Tensor:
    return ((raw.float() - threshold) / (high - low) + 0.5).clamp_(0.0, 1.0)


__all__ = ["Decision"]
