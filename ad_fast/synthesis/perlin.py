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
    grad_y, grad_x = np.cos(theta), np.sin(theta)  # gradient components per lattice point

    ii, jj = np.arange(height) + 0.5 - height / 2, np.arange(width) + 0.5 - width / 2
    cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    if sin == 0.0:
        # Unrotated: y depends on the row only and x on the column only (sin·jj and sin·ii are ±0, which the
        # half-size offset absorbs), so the lattice coordinates, fades and row-side products are computed per row /
        # per column and only the gathers and the interpolation run over the full image. Same values as the 2-D form.
        y = (cos * ii + height / 2) * (res_y / height)
        x = (cos * jj + width / 2) * (res_x / width)
    else:
        y = (cos * ii[:, None] - sin * jj[None, :] + height / 2) * (res_y / height)
        x = (sin * ii[:, None] + cos * jj[None, :] + width / 2) * (res_x / width)
    y0, x0 = np.floor(y).astype(np.int64), np.floor(x).astype(np.int64)
    fy, fx = y - y0, x - x0
    rows = (y0 % res_y, (y0 + 1) % res_y)
    cols = (x0 % res_x, (x0 + 1) % res_x)
    fys, fxs = (fy, fy - 1), (fx, fx - 1)
    ty, tx = _fade(fy), _fade(fx)

    if sin == 0.0:
        def corner(dy: int, dx: int) -> np.ndarray:  # gradient · offset, gradient of lattice point (y0+dy, x0+dx)
            along_y = grad_y[rows[dy]] * fys[dy][:, None]  # [H, res_x]: the products only depend on the row
            return along_y[:, cols[dx]] + grad_x[rows[dy]][:, cols[dx]] * fxs[dx]

        ty, tx = ty[:, None], tx[None, :]
    else:
        grad_y, grad_x = grad_y.ravel(), grad_x.ravel()
        flat_rows = (rows[0] * res_x, rows[1] * res_x)

        def corner(dy: int, dx: int) -> np.ndarray:
            index = flat_rows[dy] + cols[dx]
            return grad_y.take(index) * fys[dy] + grad_x.take(index) * fxs[dx]

    c00, c10 = corner(0, 0), corner(1, 0)
    top = c00 + tx * (corner(0, 1) - c00)
    bottom = c10 + tx * (corner(1, 1) - c10)
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
