"""Threshold rules: learn a :class:`~ad_fast.decision.Decision` from raw outputs on calibration images.

No test image is involved: the inputs are the raw scores and maps of normal images held out of the training (and,
optionally, of labelled or synthetic anomalies).

The rules (each applied to image scores and, separately, to map pixels):

* **normals only** (``source="normal-quantile"``): the base threshold is the ``quantile`` of the normal values
  (``numpy.quantile``, linear interpolation; defaults :data:`IMAGE_QUANTILE` for image scores,
  :data:`PIXEL_QUANTILE` for pixels).
* **with anomalies** (``source="f1-labelled"``): the threshold maximising F1 on the calibration values
  (:func:`ad_fast.metrics.f1_max`), moved down to the midpoint between that value and the largest calibration value
  below it, so separable sets are split in the middle of their gap rather than at the lowest anomaly.
* **sensitivity** ``s`` in [0, 1] (default 0.5 leaves the base threshold ``t`` as it is) moves it along the spread
  of the normals: ``t(s) = t + (1 - 2 s) · (t - median(normal))``. ``s = 1`` puts it at the normal median (about
  half the normal images NG), ``s = 0`` twice as far above the median as the base threshold; higher = more NG.
* **normalisation range**: symmetric around the threshold, ``[t - w, t + w]`` with ``w`` the largest distance of any
  calibration value from ``t``, so every calibration value maps inside [0, 1] and ``t`` maps to 0.5. When all values
  coincide, ``w = max(|t|, 1) · 1e-3``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import metrics
from .decision import Decision

IMAGE_QUANTILE = 0.99
PIXEL_QUANTILE = 0.999
DEFAULT_SENSITIVITY = 0.5
_FLAT_WIDTH = 1e-3


def _values(x: Any, name: str, keep_float32: bool = False) -> np.ndarray:
    """Flattened finite float64 values of an array/tensor/list (``None`` or empty -> empty array); may be a view.

    ``keep_float32``: float32 data stays float32 (float32 -> float64 is exact and monotone, so sorting, comparisons
    and counts give the same results in either; the values are widened only where arithmetic is done)."""
    if x is None:
        return np.empty(0)
    if isinstance(x, (list, tuple)):
        parts = [metrics._as_numpy(v).reshape(-1) for v in x]
        array = np.concatenate(parts) if parts else np.empty(0)
    else:
        array = metrics._as_numpy(x).reshape(-1)
    if not (keep_float32 and array.dtype == np.float32):
        array = array.astype(np.float64, copy=False)  # read-only use: a view where it already is float64
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return array


def _check_sensitivity(sensitivity: float) -> float:
    if isinstance(sensitivity, bool) or not isinstance(sensitivity, (int, float)) or not 0.0 <= sensitivity <= 1.0:
        raise ValueError(f"sensitivity: expected a number in [0, 1], got {sensitivity!r}")
    return float(sensitivity)


def quantile_threshold(normal: Any, quantile: float) -> float:
    """The ``quantile`` (in (0, 1]) of the normal values (linear interpolation)."""
    values = _values(normal, "normal")
    if values.size == 0:
        raise ValueError("normal: expected at least one value")
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile: expected a number in (0, 1], got {quantile!r}")
    return float(np.quantile(values, quantile))


def f1_threshold(normal: Any, anomalous: Any) -> float:
    """The F1-optimal threshold for ``value >= t`` separating ``anomalous`` (positive) from ``normal`` values,
    placed at the midpoint between the F1-optimal value and the largest value below it."""
    neg, pos = _values(normal, "normal"), _values(anomalous, "anomalous")
    if neg.size == 0 or pos.size == 0:
        raise ValueError(f"normal and anomalous: expected values of both, got {neg.size} and {pos.size}")
    scores = np.concatenate([neg, pos])
    labels = np.concatenate([np.zeros(neg.size, bool), np.ones(pos.size, bool)])
    best = metrics.f1_max(scores, labels, return_threshold=True)[1]
    below = scores[scores < best]
    return float((below.max() + best) / 2) if below.size else float(best)


def shift_threshold(threshold: float, normal: Any, sensitivity: float) -> float:
    """``threshold + (1 - 2 sensitivity) · (threshold - median(normal))`` (see the module docstring)."""
    sensitivity = _check_sensitivity(sensitivity)
    return _shift(threshold, float(np.median(_values(normal, "normal"))), sensitivity)


def _shift(threshold: float, median: float, sensitivity: float) -> float:
    return float(threshold + (1.0 - 2.0 * sensitivity) * (threshold - median))


def _level(normal: np.ndarray, anomalous: np.ndarray, quantile: float, sensitivity: float,
           is_sorted: bool = True) -> tuple[float, float]:
    """(threshold, half-width) for one level (image scores or pixels). The same floats as ``f1_threshold`` /
    ``quantile_threshold``, then ``shift_threshold``, then the half-width over all values, without a float64 copy
    and a sort or partition per step.

    ``normal`` and ``anomalous`` have one float dtype and are sorted ascending (``normal`` may be unsorted when
    ``is_sorted`` is false and ``anomalous`` is empty: the normals-only rule needs no sort): then the median and the
    extremes are read off the sorted normals."""
    if anomalous.size:
        best = metrics._pr_sums(anomalous, normal)[2]  # what f1_max returns on the float64 values: same order, counts
        key = normal.dtype.type(best)  # best is one of the anomalous values, so exact in their dtype
        below = [float(v[i - 1]) for v in (normal, anomalous) for i in [int(np.searchsorted(v, key, side="left"))] if i]
        base = float((max(below) + best) / 2) if below else float(best)
    else:
        wide = normal.astype(np.float64, copy=False)
        base = quantile_threshold(wide, quantile)
    if is_sorted:
        index = normal.size // 2
        middle = normal[index:index + 1] if normal.size % 2 else normal[index - 1:index + 1]
        median = float(np.mean(middle.astype(np.float64), axis=0))  # np.median: the mean of the middle element(s)
        extremes = [float(v[i]) for v in (normal, anomalous) if v.size for i in (0, -1)]
    else:
        median, extremes = float(np.median(wide)), [float(normal.min()), float(normal.max())]
    threshold = _shift(base, median, sensitivity)
    # |v - t| is largest at the smallest or the largest v (v - t rounds monotonically in v)
    width = max((abs(v - threshold) for v in extremes), default=0.0)
    return threshold, width if width > 0 else max(abs(threshold), 1.0) * _FLAT_WIDTH


def learn_decision(normal_scores: Any, normal_maps: Any, anomalous_scores: Any = None, anomalous_maps: Any = None,
                   anomalous_masks: Any = None, sensitivity: float = DEFAULT_SENSITIVITY,
                   image_quantile: float = IMAGE_QUANTILE, pixel_quantile: float = PIXEL_QUANTILE,
                   source: str | None = None) -> Decision:
    """Learn thresholds and normalisation ranges from raw calibration outputs (rules in the module docstring).

    Args:
        normal_scores (Tensor/array[N]): raw image scores of held-out normal images.
        normal_maps (Tensor/array[N, 1, H, W] or [N, H, W], or a list of maps): their raw anomaly maps.
        anomalous_scores (Tensor/array[M]) or None: raw scores of anomalous images -> F1-optimal image threshold.
        anomalous_maps ([M, (1,) H, W]) and anomalous_masks (same shape, binary) or None: their raw maps and
            ground truth -> F1-optimal pixel threshold (pixels outside a mask count as normal).
        sensitivity: in [0, 1]; higher flags more images and pixels (0.5: the rules' own thresholds).
        image_quantile, pixel_quantile: the quantiles of the normals-only rule.
        source: recorded in the decision (default: ``"normal-quantile"`` or ``"f1-labelled"``).
    """
    _check_sensitivity(sensitivity)
    normal_s, normal_p = _values(normal_scores, "normal_scores"), _values(normal_maps, "normal_maps", keep_float32=True)
    if normal_s.size == 0 or normal_p.size == 0:
        raise ValueError("normal_scores and normal_maps: calibration needs at least one normal image")
    anomalous_s = _values(anomalous_scores, "anomalous_scores")
    pixel_pos, pixel_neg = np.empty(0, normal_p.dtype), normal_p
    if anomalous_maps is not None:
        if anomalous_masks is None:
            raise ValueError("anomalous_masks: required with anomalous_maps (one binary mask per map)")
        maps = _values(anomalous_maps, "anomalous_maps", keep_float32=True)
        masks = _values(anomalous_masks, "anomalous_masks", keep_float32=True) > 0.5
        if maps.size != masks.size:
            raise ValueError(f"anomalous_maps and anomalous_masks: expected the same number of pixels, "
                             f"got {maps.size} and {masks.size}")
        dtype = np.result_type(normal_p, maps)
        pixel_pos = maps[masks].astype(dtype, copy=False)
        pixel_neg = np.concatenate([normal_p, maps[~masks]], dtype=dtype)
        if pixel_pos.size:  # the F1 rule: sort both (pixel_neg is a fresh array)
            pixel_pos.sort()
            pixel_neg.sort()
    image_t, image_w = _level(np.sort(normal_s), np.sort(anomalous_s), image_quantile, sensitivity)
    pixel_t, pixel_w = _level(pixel_neg, pixel_pos, pixel_quantile, sensitivity, is_sorted=pixel_pos.size > 0)
    labelled = anomalous_s.size > 0 or pixel_pos.size > 0
    return Decision(image_threshold=image_t, pixel_threshold=pixel_t, image_low=image_t - image_w,
                    image_high=image_t + image_w, pixel_low=pixel_t - pixel_w, pixel_high=pixel_t + pixel_w,
                    source=source or ("f1-labelled" if labelled else "normal-quantile"))


__all__ = ["DEFAULT_SENSITIVITY", "IMAGE_QUANTILE", "PIXEL_QUANTILE", "f1_threshold", "learn_decision",
           "quantile_threshold", "shift_threshold"]
