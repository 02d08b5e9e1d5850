"""Gaussian blur of anomaly maps with an explicit border rule (pure PyTorch)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


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

    Differentiable. ``sigma`` must be positive and finite.
    """
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma: expected a positive finite number, got {sigma!r}")
    if x.dim() != 4:
        raise ValueError(f"x: expected a 4-d tensor [B, C, H, W], got shape {tuple(x.shape)}")
    radius = blur_radius(sigma)
    taps = gaussian_taps(sigma, x.dtype, x.device)
    channels = x.shape[1]
    padded = x.index_select(2, reflect_indices(x.shape[2], radius, x.device))
    padded = padded.index_select(3, reflect_indices(x.shape[3], radius, x.device))
    out = F.conv2d(padded, taps.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    return F.conv2d(out, taps.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
