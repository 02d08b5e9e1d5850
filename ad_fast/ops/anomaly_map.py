"""Fused anomaly maps: per-level feature distance, upsampling, weighted level sum and Gaussian blur."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .._extension import has_ops
from ._backend import use_kernel
from ._validate import (FLOAT_DTYPES, check_choice, check_positive_pair, check_same_device, check_tensor,
                        values_readable)
from .blur import MAX_BLUR_SIGMA, gaussian_blur

METRICS = ("cosine", "l2")
REDUCTIONS = ("sum", "mean")
COSINE_EPS = 1e-8  # as torch.nn.functional.cosine_similarity

FeatureList = Sequence[torch.Tensor]


def _validated(
    feats_a: FeatureList | torch.Tensor,
    feats_b: FeatureList | torch.Tensor,
    out_size: int | Sequence[int],
    metric: str,
    weights: Sequence[float] | None,
    reduce: str,
    blur_sigma: float | None,
) -> tuple[list[torch.Tensor], list[torch.Tensor], tuple[int, int], list[float], float]:
    """Check every argument; return levels, output size, effective per-level weights and sigma (0 = none)."""
    levels_a = [feats_a] if isinstance(feats_a, torch.Tensor) else list(feats_a)
    levels_b = [feats_b] if isinstance(feats_b, torch.Tensor) else list(feats_b)
    if not levels_a:
        raise ValueError("feats_a: expected at least one feature map [B, C, H, W]")
    if len(levels_a) != len(levels_b):
        raise ValueError(f"feats_b: expected {len(levels_a)} levels like feats_a, got {len(levels_b)}")
    batch = None
    for i, (a, b) in enumerate(zip(levels_a, levels_b)):
        check_tensor(a, f"feats_a[{i}]", ndim=4, dtypes=FLOAT_DTYPES, allow_empty=True)
        check_tensor(b, f"feats_b[{i}]", ndim=4, dtypes=FLOAT_DTYPES, allow_empty=True)
        if a.shape != b.shape:
            raise ValueError(f"feats_b[{i}]: expected shape {tuple(a.shape)} like feats_a[{i}], got {tuple(b.shape)}")
        if a.dtype != levels_a[0].dtype or b.dtype != levels_a[0].dtype:
            raise TypeError(f"feats_a[{i}]/feats_b[{i}]: expected dtype {levels_a[0].dtype} like feats_a[0]")
        if min(a.shape[1:]) == 0:
            raise ValueError(f"feats_a[{i}]: expected non-empty C, H, W, got shape {tuple(a.shape)}")
        batch = a.shape[0] if batch is None else batch
        if a.shape[0] != batch:
            raise ValueError(f"feats_a[{i}]: expected batch size {batch} like feats_a[0], got {a.shape[0]}")
        check_same_device({"feats_a[0]": levels_a[0], f"feats_a[{i}]": a, f"feats_b[{i}]": b})
    size = check_positive_pair(out_size, "out_size")
    check_choice(metric, "metric", METRICS)
    check_choice(reduce, "reduce", REDUCTIONS)
    if weights is None:
        level_weights = [1.0] * len(levels_a)
    else:
        level_weights = [float(w) for w in weights]
        if len(level_weights) != len(levels_a):
            raise ValueError(f"weights: expected {len(levels_a)} values (one per level), got {len(level_weights)}")
    if reduce == "mean":
        total = sum(level_weights)
        if total == 0:
            raise ValueError("weights: must not sum to zero when reduce='mean'")
        level_weights = [w / total for w in level_weights]
    sigma = 0.0
    if blur_sigma is not None:
        sigma = float(blur_sigma)
        if not 0 < sigma <= MAX_BLUR_SIGMA:
            raise ValueError(
                f"blur_sigma: expected None or a number in (0, {MAX_BLUR_SIGMA:g}] (a wider Gaussian is flat over any "
                f"map), got {blur_sigma!r}"
            )
    return levels_a, levels_b, size, level_weights, sigma


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def anomaly_map_reference(
    feats_a: FeatureList | torch.Tensor,
    feats_b: FeatureList | torch.Tensor,
    out_size: int | Sequence[int],
    metric: str = "cosine",
    weights: Sequence[float] | None = None,
    reduce: str = "sum",
    blur_sigma: float | None = None,
    return_score: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Unfused PyTorch version of :func:`anomaly_map` (same arguments and results); differentiable."""
    levels_a, levels_b, size, level_weights, sigma = _validated(
        feats_a, feats_b, out_size, metric, weights, reduce, blur_sigma
    )
    dtype = _compute_dtype(levels_a[0].dtype)
    total = None
    for a, b, weight in zip(levels_a, levels_b, level_weights):
        dist = _channel_distance(a, b, metric).to(dtype)
        up = F.interpolate(dist.unsqueeze(1), size=size, mode="bilinear", align_corners=False)
        total = weight * up if total is None else total + weight * up
    if sigma > 0:
        total = gaussian_blur(total, sigma)
    _check_finite_map(total)
    return (total, total.flatten(1).amax(1)) if return_score else total


def _channel_distance(a: torch.Tensor, b: torch.Tensor, metric: str) -> torch.Tensor:
    """Per-pixel distance ``[B, H, W]`` over channels, summed in float64 as the CPU kernel does, so float32
    features up to FLT_MAX neither overflow the squared norms nor their product."""
    a, b = a.to(torch.float64), b.to(torch.float64)
    if metric == "l2":
        return (a - b).square().sum(1).sqrt()
    norms = a.square().sum(1).sqrt() * b.square().sum(1).sqrt()
    return 1.0 - (a * b).sum(1) / norms.clamp_min(COSINE_EPS)


def _check_finite_map(out: torch.Tensor) -> None:
    if values_readable() and not bool(torch.isfinite(out).all()):
        raise ValueError(
            "feats_a/feats_b: the anomaly map is not finite (NaN or Inf in the features, or distances overflowing "
            "their dtype)"
        )


def anomaly_map(
    feats_a: FeatureList | torch.Tensor,
    feats_b: FeatureList | torch.Tensor,
    out_size: int | Sequence[int],
    metric: str = "cosine",
    weights: Sequence[float] | None = None,
    reduce: str = "sum",
    blur_sigma: float | None = None,
    return_score: bool = False,
    backend: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Anomaly map from pairs of feature maps, fused into two passes over memory.

    For each level l, ``d_l = 1 - cos(a_l, b_l)`` over channels (``metric="cosine"``; the cosine follows
    ``torch.nn.functional.cosine_similarity`` with eps 1e-8) or ``||a_l - b_l||_2`` (``"l2"``); each ``d_l`` is
    upsampled bilinearly (align_corners=False) to ``out_size``; the levels are combined as ``sum_l w_l d_l``
    (``reduce="sum"``) or ``sum_l w_l d_l / sum_l w_l`` (``"mean"``); an optional Gaussian blur (taps
    ``2 * int(4 * blur_sigma + 0.5) + 1``, reflect borders: ``d c b | a b c d | c b a``, repeated for any size)
    follows.

    Args:
        feats_a (list of Tensor[B, C_l, H_l, W_l]): first features per level (or one tensor). float32/float64
            (float16/bfloat16 are computed in float32). Any strides (channels-last included).
        feats_b (list of Tensor[B, C_l, H_l, W_l]): second features, same shapes and dtype.
        out_size (int or (H, W)): output size.
        metric ("cosine" | "l2"), weights (one float per level, default 1), reduce ("sum" | "mean"),
        blur_sigma (float or None): as above.
        return_score (bool): also return the per-image maximum.
        backend (None | "auto" | "kernel" | "reference"): overrides the global choice (see ``ad_fast.ops``).

    Returns:
        Tensor[B, 1, H, W] (float64 for float64 input, else float32), and Tensor[B] when ``return_score``.

    Raises ValueError (naming the argument) for bad arguments, ``blur_sigma`` above 1000, and NaN/Inf in the result
    (NaN/Inf features, or distances overflowing the dtype: channel sums are accumulated in float64 on CPU).

    The kernel is inference-only; when an input requires grad (and grad mode is on) the differentiable
    reference runs instead.
    """
    levels_a, levels_b, size, level_weights, sigma = _validated(
        feats_a, feats_b, out_size, metric, weights, reduce, blur_sigma
    )
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in levels_a + levels_b)
    if needs_grad or not use_kernel("anomaly_map", levels_a[0].device, backend):
        return anomaly_map_reference(levels_a, levels_b, size, metric, level_weights, "sum", blur_sigma, return_score)
    if levels_a[0].device.type == "cpu":
        dtype = _compute_dtype(levels_a[0].dtype)
        levels_a = [a.to(dtype) for a in levels_a]
        levels_b = [b.to(dtype) for b in levels_b]
    elif levels_a[0].dtype == torch.float64:
        raise TypeError("feats_a: float64 is not supported by the CUDA kernel; use float32/float16/bfloat16")
    out = torch.ops.ad_fast.anomaly_map(levels_a, levels_b, list(size), metric, level_weights, sigma)
    return (out, out.flatten(1).amax(1)) if return_score else out


if has_ops():

    @torch.library.register_fake("ad_fast::anomaly_map")
    def _anomaly_map_fake(feats_a, feats_b, out_size, metric, weights, blur_sigma):
        torch._check(len(feats_a) > 0, lambda: "feats_a must hold at least one feature map")
        first = feats_a[0]
        torch._check(len(feats_a) == len(feats_b), lambda: "feats_a and feats_b must have the same number of levels")
        # Also reached by a raw call mixing a meta tensor with a real one: the devices must be checked here.
        check_same_device({f"{name}[{i}]": t for name, ts in (("feats_a", feats_a), ("feats_b", feats_b))
                           for i, t in enumerate(ts)})
        torch._check(len(weights) == len(feats_a), lambda: "weights must have one entry per level")
        for a, b in zip(feats_a, feats_b):
            torch._check(a.shape == b.shape, lambda: "feats_a and feats_b must have the same shapes")
            torch._check(a.dim() == 4, lambda: "feature maps must be 4-d")
        torch._check(len(out_size) == 2 and all(s > 0 for s in out_size),
                     lambda: f"out_size must be two positive sides (H, W), got {list(out_size)}")
        dtype = first.dtype if first.dtype in (torch.float32, torch.float64) else torch.float32
        return first.new_empty((first.shape[0], 1, out_size[0], out_size[1]), dtype=dtype)
