"""Procedural textures (no downloads) and a texture source for DRAEM-style pasting (DTD-like folders optional)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from ._rng import RandomState, as_generator
from .perlin import fractal_noise

TEXTURE_KINDS = ("fractal", "marble", "checker", "cells", "dots")


def _palette(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.uniform(0.0, 1.0, size=(n, 3)).astype(np.float32)


def _colorize(field: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Map a scalar field ``[H, W]`` to RGB ``[H, W, 3]`` through a random 3-colour gradient."""
    lo, hi = field.min(), field.max()
    t = (field - lo) / max(hi - lo, 1e-6)
    c0, c1, c2 = _palette(rng, 3)
    t = t[..., None]
    return np.where(t < 0.5, c0 + (c1 - c0) * (2 * t), c1 + (c2 - c1) * (2 * t - 1))


def _rotated_coords(shape: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    height, width = shape
    angle = rng.uniform(0, math.pi)
    ii, jj = np.arange(height, dtype=np.float32)[:, None], np.arange(width, dtype=np.float32)[None, :]
    return math.cos(angle) * ii - math.sin(angle) * jj, math.sin(angle) * ii + math.cos(angle) * jj


_NEAREST_BLOCK = 1 << 21  # float64 elements of the [rows, W, points] squared-distance block


def _nearest_point_distance(shape: tuple[int, int], points: np.ndarray) -> np.ndarray:
    """``min over points of hypot(i - py, j - px)`` per pixel ``[H, W]``, rounded to float32.

    The nearest point is found from squared distances (one vectorised pass per block of rows); ``np.hypot`` is then
    evaluated only for the pixels' candidates: every point whose squared distance is within a relative 1e-7 of the
    smallest. Rounding errors of the squared distances (a few ulp) and of ``hypot`` (under one ulp) are far below
    that margin, so a point outside it cannot have the smallest ``hypot``: the result is the same float32 as taking
    the minimum of ``hypot`` over all points (rounding to float32 is monotone, so it commutes with the minimum).
    """
    height, width = shape
    count = len(points)
    dy = np.arange(height)[:, None] - points[:, 0]  # [H, P]: the same float64 values as i - py
    dx = np.arange(width)[:, None] - points[:, 1]  # [W, P]
    dy2, dx2 = dy * dy, dx * dx
    dist = np.empty(shape, dtype=np.float32)
    step = max(1, _NEAREST_BLOCK // max(1, count * width))
    for start in range(0, height, step):
        stop = min(start + step, height)
        d2 = dy2[start:stop, None, :] + dx2[None, :, :]  # [rows, W, P]
        limit = d2.min(axis=-1) * (1.0 + 1e-7)
        pixel, k = np.divmod(np.flatnonzero(d2 <= limit[..., None]), count)
        row, col = np.divmod(pixel, width)
        block = np.full((stop - start) * width, np.inf)
        np.minimum.at(block, pixel, np.hypot(dy[start + row, k], dx[col, k]))
        dist[start:stop] = block.reshape(stop - start, width)
    return dist


def procedural_texture(size: int | tuple[int, int], rng: RandomState = None, kind: str | None = None) -> torch.Tensor:
    """A random texture ``Tensor[3, H, W]`` float32 in [0, 1].

    Args:
        kind: one of :data:`TEXTURE_KINDS` (fractal Perlin clouds, warped marble stripes, rotated checkerboard,
            Worley cells, scattered dots); ``None`` draws one at random.
    """
    rng = as_generator(rng)
    shape = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if kind is None:
        kind = TEXTURE_KINDS[int(rng.integers(len(TEXTURE_KINDS)))]
    if kind not in TEXTURE_KINDS:
        raise ValueError(f"kind: expected one of {TEXTURE_KINDS} or None, got {kind!r}")
    base = int(rng.integers(2, 9))
    if kind == "fractal":
        rgb = _colorize(fractal_noise(shape, (base, base), rng), rng)
    elif kind == "marble":
        y, x = _rotated_coords(shape, rng)
        warp = fractal_noise(shape, (base, base), rng)
        rgb = _colorize(np.sin(x * (2 * math.pi * rng.uniform(2, 12) / shape[1]) + rng.uniform(2, 8) * warp), rng)
    elif kind == "checker":
        y, x = _rotated_coords(shape, rng)
        period = rng.uniform(6, max(8.0, min(shape) / 3))
        cells = (np.floor(y / period) + np.floor(x / period)) % 2
        c0, c1 = _palette(rng, 2)
        rgb = np.where(cells[..., None] > 0, c0, c1) + 0.05 * fractal_noise(shape, (base, base), rng)[..., None]
    elif kind == "cells":
        n_points = int(rng.integers(12, 64))
        points = rng.uniform(0, 1, size=(n_points, 2)) * np.array(shape)
        rgb = _colorize(_nearest_point_distance(shape, points), rng)
    else:  # dots
        background, dot = _palette(rng, 2)
        rgb = np.broadcast_to(background, (*shape, 3)).copy()
        rows, cols = np.arange(shape[0]), np.arange(shape[1])
        for _ in range(int(rng.integers(10, 60))):
            cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
            radius = rng.uniform(2, max(3.0, min(shape) / 10))
            # only the dot's bounding box (one pixel of margin each side) can hold pixels closer than the radius
            r0, r1 = max(int(cy - radius) - 1, 0), min(int(cy + radius) + 2, shape[0])
            c0, c1 = max(int(cx - radius) - 1, 0), min(int(cx + radius) + 2, shape[1])
            if r0 < r1 and c0 < c1:
                inside = np.hypot((rows[r0:r1] - cy)[:, None], (cols[c0:c1] - cx)[None, :]) < radius
                rgb[r0:r1, c0:c1][inside] = dot
    return torch.from_numpy(np.ascontiguousarray(np.clip(rgb, 0, 1).astype(np.float32, copy=False).transpose(2, 0, 1)))


class TextureSource:
    """Textures to paste into normal images: files from a folder tree (e.g. DTD's ``images/``), else procedural ones.

    Args:
        folder: a folder searched recursively for images; ``None`` uses :func:`procedural_texture`.
        size: textures come back as ``[3, H, W]`` at this size.
    """

    def __init__(self, folder: str | os.PathLike | None = None, size: int | tuple[int, int] = 256):
        from ..data.images import _as_size
        from ..data.readers import list_images

        self.size = _as_size(size)
        self.paths: list[Path] = []
        if folder is not None:
            root = Path(folder)
            if not root.is_dir():
                raise FileNotFoundError(f"folder: texture folder not found: {str(root)!r}")
            self.paths = list_images(root, recursive=True)
            if not self.paths:
                raise ValueError(f"folder: no images under {str(root)!r}")

    def sample(self, rng: RandomState = None) -> torch.Tensor:
        """One texture ``Tensor[3, H, W]`` float32 in [0, 1]."""
        from ..data.images import read_image

        rng = as_generator(rng)
        if self.paths:
            return read_image(self.paths[int(rng.integers(len(self.paths)))], self.size)
        return procedural_texture(self.size, rng)
