"""The vectorised Perlin noise and the cells/dots textures against compact copies of their original full-image
formulas: bit-identical outputs for the same seed (same draws, same floats), over seeds, angles and odd sizes."""

import math

import numpy as np
import pytest

import ad_fast.synthesis as syn
from ad_fast.synthesis.textures import _nearest_point_distance

SIZES = [(1, 1), (1, 7), (6, 1), (17, 33), (40, 52), (64, 64), (31, 100)]


def _perlin_oracle(shape, res, rng, angle=0.0):
    height, width = shape
    res_y, res_x = res
    rng = np.random.default_rng(rng)
    theta = rng.uniform(0.0, 2.0 * math.pi, size=(res_y, res_x))
    gradients = np.stack([np.cos(theta), np.sin(theta)], axis=-1)
    ii, jj = np.meshgrid(np.arange(height) + 0.5 - height / 2, np.arange(width) + 0.5 - width / 2, indexing="ij")
    cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    y = (cos * ii - sin * jj + height / 2) * (res_y / height)
    x = (sin * ii + cos * jj + width / 2) * (res_x / width)
    y0, x0 = np.floor(y).astype(np.int64), np.floor(x).astype(np.int64)
    fy, fx = y - y0, x - x0

    def corner(dy, dx):
        g = gradients[(y0 + dy) % res_y, (x0 + dx) % res_x]
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    def fade(t):
        return ((6.0 * t - 15.0) * t + 10.0) * t ** 3

    ty, tx = fade(fy), fade(fx)
    top = corner(0, 0) + tx * (corner(0, 1) - corner(0, 0))
    bottom = corner(1, 0) + tx * (corner(1, 1) - corner(1, 0))
    return (math.sqrt(2.0) * (top + ty * (bottom - top))).astype(np.float32)


def _same_bits(a, b):
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("angle", [0.0, -0.0, 30.0, -89.3, 90.0, 180.0, 7.77])
def test_perlin_noise_matches_full_image_formula(angle):
    for seed in range(12):
        for shape in SIZES + [(128, 96)]:
            res = (1 + seed % 5, 1 + (seed * 7) % 9)
            assert _same_bits(syn.perlin_noise(shape, res, seed, angle), _perlin_oracle(shape, res, seed, angle)), \
                (seed, shape, angle)


def test_nearest_point_distance_matches_hypot_loop():
    for seed in range(30):
        rng = np.random.default_rng(seed)
        shape = SIZES[seed % len(SIZES)] if seed < 20 else (int(rng.integers(1, 300)), int(rng.integers(1, 300)))
        points = rng.uniform(0, 1, size=(int(rng.integers(12, 64)), 2)) * np.array(shape)
        if seed % 3 == 0:  # points on pixel centres and duplicated points: exact ties
            points[: len(points) // 2] = np.round(points[: len(points) // 2])
            points[-1] = points[0]
        ii, jj = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
        expected = np.full(shape, np.inf, dtype=np.float32)
        for py, px in points:
            np.minimum(expected, np.hypot(ii - py, jj - px).astype(np.float32), out=expected)
        assert _same_bits(_nearest_point_distance(shape, points), expected), seed


def test_dots_match_full_image_formula():
    for seed in range(40):
        shape = SIZES[seed % len(SIZES)] if seed % 4 else (256, 256)
        rng = np.random.default_rng(seed)
        rng.integers(2, 9)
        background, dot = rng.uniform(0.0, 1.0, size=(2, 3)).astype(np.float32)
        expected = np.broadcast_to(background, (*shape, 3)).copy()
        ii, jj = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
        for _ in range(int(rng.integers(10, 60))):
            cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
            radius = rng.uniform(2, max(3.0, min(shape) / 10))
            expected[np.hypot(ii - cy, jj - cx) < radius] = dot
        got = syn.procedural_texture(shape, seed, "dots").numpy()
        assert _same_bits(got, np.clip(expected, 0, 1).transpose(2, 0, 1)), seed
