"""Photometric augmentations on float RGB images ``[3, H, W]`` in [0, 1], seeded by a NumPy Generator."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ._rng import RandomState, as_generator

_LUMA = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)


def grayscale(image: torch.Tensor) -> torch.Tensor:
    """Luma ``[1, H, W]`` (ITU-R 601, as PIL and torchvision)."""
    return (image * _LUMA.to(image)).sum(0, keepdim=True)


def rgb_to_hsv(image: torch.Tensor) -> torch.Tensor:
    """``[3, H, W]`` RGB in [0, 1] → HSV with hue in [0, 1)."""
    maxc, argmax = image.max(0)
    minc = image.min(0).values
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    r, g, b = image
    hue = torch.stack([((g - b) / safe) % 6, (b - r) / safe + 2, (r - g) / safe + 4]).gather(0, argmax[None])[0] / 6
    hue = torch.where(delta > 0, hue, torch.zeros_like(hue))
    sat = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    return torch.stack([hue % 1.0, sat, maxc])


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hsv`."""
    h, s, v = hsv
    k = (torch.tensor([5.0, 3.0, 1.0], dtype=hsv.dtype).view(3, 1, 1) + h * 6) % 6
    return v - v * s * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def color_jitter(image: torch.Tensor, rng: RandomState = None, brightness: float = 0.4, contrast: float = 0.4,
                 saturation: float = 0.4, hue: float = 0.1) -> torch.Tensor:
    """torchvision-style ColorJitter (factors drawn from [1-x, 1+x], hue shift from [-hue, hue]), in this fixed
    order: brightness, contrast, saturation, hue. Returns a new ``[3, H, W]`` in [0, 1]."""
    rng = as_generator(rng)
    out = (image * rng.uniform(1 - brightness, 1 + brightness)).clamp(0, 1)
    mean = grayscale(out).mean()
    out = (mean + rng.uniform(1 - contrast, 1 + contrast) * (out - mean)).clamp(0, 1)
    gray = grayscale(out)
    out = (gray + rng.uniform(1 - saturation, 1 + saturation) * (out - gray)).clamp(0, 1)
    hsv = rgb_to_hsv(out)
    hsv[0] = (hsv[0] + rng.uniform(-hue, hue)) % 1.0
    return hsv_to_rgb(hsv).clamp(0, 1)


def _gamma(x, rng):
    return x.clamp_min(0) ** torch.tensor(rng.uniform(0.5, 2.0, 3), dtype=x.dtype).view(3, 1, 1)


def _multiply_add(x, rng):
    return x * rng.uniform(0.8, 1.2) + rng.uniform(-30, 30) / 255


def _sharpen(x, rng):
    blur = F.avg_pool2d(F.pad(x[None], (1, 1, 1, 1), mode="replicate"), 3, stride=1)[0]
    return x + rng.uniform(0.0, 2.0) * (x - blur)


def _hue_saturation(x, rng):
    hsv = rgb_to_hsv(x.clamp(0, 1))
    hsv[0] = (hsv[0] + rng.uniform(-50, 50) / 255) % 1.0
    hsv[1] = (hsv[1] + rng.uniform(-50, 50) / 255).clamp(0, 1)
    return hsv_to_rgb(hsv)


def _solarize(x, rng):
    return torch.where(x >= rng.uniform(32, 128) / 255, 1 - x, x)


def _posterize(x, rng):
    levels = 2 ** int(rng.integers(4, 9))
    return torch.floor(x.clamp(0, 1) * (levels - 1e-6)) / (levels - 1)


def _fliplr(x, rng):
    return x.flip(-1)


def _invert(x, rng):
    return 1 - x


def _autocontrast(x, rng):
    low = x.amin(dim=(1, 2), keepdim=True)
    high = x.amax(dim=(1, 2), keepdim=True)
    return (x - low) / (high - low).clamp_min(1e-6)


def _equalize(x, rng):
    levels = (x.clamp(0, 1) * 255).round().long()
    out = torch.empty_like(x)
    for c in range(x.shape[0]):
        cdf = torch.bincount(levels[c].flatten(), minlength=256).cumsum(0).to(x.dtype)
        cdf = (cdf - cdf[cdf > 0][0]) / (cdf[-1] - cdf[cdf > 0][0]).clamp_min(1)
        out[c] = cdf[levels[c]]
    return out


DRAEM_AUGMENTERS: tuple[Callable[[torch.Tensor, np.random.Generator], torch.Tensor], ...] = (
    _gamma, _multiply_add, _sharpen, _hue_saturation, _solarize, _posterize, _fliplr, _invert, _autocontrast, _equalize,
)


def draem_augment(image: torch.Tensor, rng: RandomState = None, n_ops: int = 3) -> torch.Tensor:
    """Apply ``n_ops`` distinct augmenters drawn from DRAEM's ten (gamma, multiply-add brightness, sharpen,
    hue/saturation, solarize, posterize, flip, invert, autocontrast, equalize) in random order. ``[3, H, W]`` → same."""
    rng = as_generator(rng)
    out = image
    for index in rng.choice(len(DRAEM_AUGMENTERS), size=n_ops, replace=False):
        out = DRAEM_AUGMENTERS[int(index)](out, rng).clamp(0, 1)
    return out
