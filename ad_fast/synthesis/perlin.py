"""Perlin gradient noise and the DRAEM-style binary anomaly masks thresholded from it."""

from __future__ import annotations

import math

import numpy as np
import torch

from ._rng import RandomState, as_generator


def perlin_noise(shape: tuple[int, int], res: tuple[int, int], rng: RandomState = None,
                 angle: float = 0.0) -> np.ndarray:
    """2-D Perlin noise ``[H, W]`` (float32, in about [-1, 1]) with ``res`` (rows, cols) lattice cells over the image.

    The lattice wraps around, so any image size works (no divisibility constraint) and the pattern can be rotated by
    ``angle`` degrees about the image centre without empty corners. Scaled by √2 as in DRAEM, so thresholds carry over.
    """
    height, width = shape
    res_y, res_x = int(res[0]), int(res[1])
    if height < 1 or width < 1 or res_y < 1 or res_x < 1:
        raise ValueError(f"shape and res: expected positive sizes, got shape={shape!r}, res={res!r}")
    rng = as_generator(rng)
    theta = rng.uniform(0.0, 2.0 * math.pi, size=(res_y, res_x))
    gradients = np.stack([np.cos(theta), np.sin(theta)], axis=-1)

    ii, jj = np.meshgrid(np.arange(height) + 0.5 - height / 2, np.arange(width) + 0.5 - width / 2, indexing="ij")
    cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    y = (cos * ii - sin * jj + height / 2) * (res_y / height)
    x = (sin * ii + cos * jj + width / 2) * (res_x / width)
    y0, x0 = np.floor(y).astype(np.int64), np.floor(x).astype(np.int64)
    fy, fx = y - y0, x - x0

    def corner(dy: int, dx: int) -> np.ndarray:
        g = gradients[(y0 + dy) % res_y, (x0 + dx) % res_x]
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    ty, tx = _fade(fy), _fade(fx)
    top = corner(0, 0) + tx * (corner(0, 1) - corner(0, 0))
    bottom = corner(1, 0) + tx * (corner(1, 1) - corner(1, 0))
    return (math.sqrt(2.0) * (top + ty * (bottom - top))).astype(np.float32)


def _fade(t: np.ndarray) -> np.ndarray:
    return ((6.0 * t - 15.0) * t + 10.0) * t ** 3


def perlin_mask(shape: tuple[int, int], rng: RandomState = None, scale_exponents: tuple[int, int] = (0, 6),
                max_rotation: float = 90.0, threshold: float = 0.5, min_pixels: int = 1,
                max_tries: int = 16) -> torch.Tensor:
    """A DRAEM-style anomaly mask ``Tensor[1, H, W]`` float32 in {0, 1}: Perlin noise > ``threshold``.

    Args:
        scale_exponents: lattice cells per axis are ``2**a`` with ``a`` drawn from ``range(*scale_exponents)``
            independently per axis. Default (0, 6) is DRAEM; OneNIP uses (1, 6).
        max_rotation: the noise is rotated by U(-max_rotation, max_rotation) degrees (DRAEM 90, OneNIP 5).
        min_pixels: redraw (up to ``max_tries`` times) while the mask has fewer anomalous pixels; 0 allows empty masks.
    """
    rng = as_generator(rng)
    low, high = scale_exponents
    if not 0 <= low < high:
        raise ValueError(f"scale_exponents: expected (low, high) with 0 <= low < high, got {scale_exponents!r}")
    for _ in range(max(1, max_tries)):
        res = (2 ** int(rng.integers(low, high)), 2 ** int(rng.integers(low, high)))
        noise = perlin_noise(shape, res, rng, angle=float(rng.uniform(-max_rotation, max_rotation)))
        mask = noise > threshold
        if mask.sum() >= min_pixels:
            break
    return torch.from_numpy(mask.astype(np.float32)).unsqueeze(0)


def fractal_noise(shape: tuple[int, int], res: tuple[int, int], rng: RandomState = None, octaves: int = 4,
                  persistence: float = 0.5) -> np.ndarray:
    """Sum of ``octaves`` Perlin layers, each with twice the cells and ``persistence`` times the amplitude. ``[H, W]``."""
    rng = as_generator(rng)
    total = np.zeros(shape, dtype=np.float32)
    amplitude = 1.0
    for octave in range(octaves):
        total += amplitude * perlin_noise(shape, (res[0] * 2 ** octave, res[1] * 2 ** octave), rng)
        amplitude *= persistence
    return total
