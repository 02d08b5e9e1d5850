"""CutPaste anomalies (Li et al. 2021): a colour-jittered patch of the image pasted elsewhere, rectangle or thin scar."""

from __future__ import annotations

import math

import numpy as np
import torch

from ._rng import RandomState, as_generator
from .augment import color_jitter


def _check_image(image: torch.Tensor) -> tuple[int, int]:
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image: expected a tensor [3, H, W], got {getattr(image, 'shape', type(image).__name__)}")
    return int(image.shape[1]), int(image.shape[2])


def cutpaste_normal(image: torch.Tensor, rng: RandomState = None, area_ratio: tuple[float, float] = (0.02, 0.15),
                    aspect_ratio: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """CutPaste-normal: a rectangle of U(area_ratio)·H·W pixels and aspect from U(aspect_ratio, 1) or
    U(1, 1/aspect_ratio), cut at a random place, colour-jittered, pasted at another random place.

    Returns:
        (Tensor[3, H, W], Tensor[1, H, W]): the image with the patch, and the pasted rectangle as mask.
    """
    height, width = _check_image(image)
    rng = as_generator(rng)
    area = rng.uniform(*area_ratio) * height * width
    aspect = rng.uniform(aspect_ratio, 1.0) if rng.uniform() < 0.5 else rng.uniform(1.0, 1.0 / aspect_ratio)
    patch_w = int(np.clip(int(math.sqrt(area * aspect)), 1, width))
    patch_h = int(np.clip(int(math.sqrt(area / aspect)), 1, height))
    sy, sx = int(rng.integers(0, height - patch_h + 1)), int(rng.integers(0, width - patch_w + 1))
    dy, dx = int(rng.integers(0, height - patch_h + 1)), int(rng.integers(0, width - patch_w + 1))
    patch = color_jitter(image[:, sy:sy + patch_h, sx:sx + patch_w], rng)
    out = image.clone()
    out[:, dy:dy + patch_h, dx:dx + patch_w] = patch
    mask = torch.zeros(1, height, width, dtype=image.dtype)
    mask[:, dy:dy + patch_h, dx:dx + patch_w] = 1
    return out, mask


def cutpaste_scar(image: torch.Tensor, rng: RandomState = None, width_range: tuple[int, int] = (2, 16),
                  length_range: tuple[int, int] = (10, 25),
                  max_rotation: float = 45.0) -> tuple[torch.Tensor, torch.Tensor]:
    """CutPaste-scar: a thin ``width × length`` strip (randint, inclusive ranges), colour-jittered, rotated by
    U(-max_rotation, max_rotation) degrees and pasted at a random place (nearest-neighbour sampling).

    Returns:
        (Tensor[3, H, W], Tensor[1, H, W]): the image with the scar, and the scar's pixels as mask.
    """
    height, width = _check_image(image)
    rng = as_generator(rng)
    scar_w = min(int(rng.integers(width_range[0], width_range[1] + 1)), width)
    scar_h = min(int(rng.integers(length_range[0], length_range[1] + 1)), height)
    sy, sx = int(rng.integers(0, height - scar_h + 1)), int(rng.integers(0, width - scar_w + 1))
    patch = color_jitter(image[:, sy:sy + scar_h, sx:sx + scar_w], rng)

    angle = math.radians(rng.uniform(-max_rotation, max_rotation))
    cos, sin = math.cos(angle), math.sin(angle)
    box_h = min(height, int(math.ceil(abs(scar_h * cos) + abs(scar_w * sin))))
    box_w = min(width, int(math.ceil(abs(scar_h * sin) + abs(scar_w * cos))))
    dy, dx = int(rng.integers(0, height - box_h + 1)), int(rng.integers(0, width - box_w + 1))
    ii, jj = np.meshgrid(np.arange(box_h) + 0.5 - box_h / 2, np.arange(box_w) + 0.5 - box_w / 2, indexing="ij")
    py = cos * ii + sin * jj + scar_h / 2  # inverse rotation: box pixel → patch coordinates
    px = -sin * ii + cos * jj + scar_w / 2
    inside = (py >= 0) & (py < scar_h) & (px >= 0) & (px < scar_w)
    rows, cols = np.nonzero(inside)
    src_y = torch.from_numpy(np.floor(py[inside]).astype(np.int64))
    src_x = torch.from_numpy(np.floor(px[inside]).astype(np.int64))
    out = image.clone()
    dst_y, dst_x = torch.from_numpy(rows + dy), torch.from_numpy(cols + dx)
    out[:, dst_y, dst_x] = patch[:, src_y, src_x]
    mask = torch.zeros(1, height, width, dtype=image.dtype)
    mask[0, dst_y, dst_x] = 1
    return out, mask


def cutpaste(image: torch.Tensor, rng: RandomState = None) -> tuple[torch.Tensor, torch.Tensor]:
    """CutPaste "binary" variant: normal or scar with probability 1/2 each."""
    rng = as_generator(rng)
    return (cutpaste_normal if rng.uniform() < 0.5 else cutpaste_scar)(image, rng)
