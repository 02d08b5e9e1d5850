"""Gaussian blur of anomaly maps with an explicit border rule (pure PyTorch)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Largest accepted sigma (radius 4000; the kernels' kMaxBlurSigma, csrc/anomaly_map/anomaly_map_common.h): a wider
# Gaussian is flat over any anomaly map, and its taps alone would take gigabytes.
MAX_BLUR_SIGMA = 1000.0


def blur_radius(sigma: float) -> int:
    """Half-width of the Gaussian used everywhere in ad_fast: ``int(4 * sigma + 0.5)`` (PatchCore/anomalib,
    and scipy.ndimage.gaussian_filter with truncate=4)."""
    return int(4.0 * sigma + 0.5)


def gaussian_taps(sigma: float, dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> torch.Tensor:
    """Normalised 1-D Gaussian ``[2 * blur_radius(sigma) + 1]``."""
    radius = blur_radius(sigma)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return (taps / taps.sum()).to(dtype=dtype, device=device)


def reflect_indices(size: int, radius: int, device: torch.device | None = None) -> torch.Tensor:
    """Source indices ``[size + 2 * radius]`` of a reflect-padded axis (mirror without repeating the edge
    sample, applied repeatedly, so any radius works on any size; torch "reflect" / scipy "mirror")."""
    positions = torch.arange(-radius, size + radius, device=device)
    if size == 1:
        return torch.zeros_like(positions)
    period = 2 * (size - 1)
    positions = positions.abs() % period
    return torch.where(positions >= size, period - positions, positions)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``x`` ``[B, C, H, W]`` with reflect borders; returns the same shape.

    Differentiable. ``sigma`` must be in (0, 1000]. Memory: one axis is padded at a time, so the largest
    intermediate is ``[B, C, H + 2r, W]`` or ``[B, C, H, W + 2r]`` (``r`` = :func:`blur_radius`).
    """
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and 0 < sigma <= MAX_BLUR_SIGMA):
        raise ValueError(f"sigma: expected a number in (0, {MAX_BLUR_SIGMA:g}], got {sigma!r}")
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"x: expected a 4-d tensor [B, C, H, W], got {getattr(x, 'shape', type(x).__name__)}")
    if x.numel() == 0:
        if min(x.shape[2:]) == 0:
            raise ValueError(f"x: expected non-empty H and W, got shape {tuple(x.shape)}")
        return x.clone()
    radius = blur_radius(sigma)
    taps = gaussian_taps(sigma, x.dtype, x.device)
    channels = x.shape[1]
    rows = x.index_select(2, reflect_indices(x.shape[2], radius, x.device))
    out = F.conv2d(rows, taps.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    cols = out.index_select(3, reflect_indices(x.shape[3], radius, x.device))
    return F.conv2d(cols, taps.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
