"""Paired geometric and photometric augmentation for change pairs (the paper's scale/translation/rotation and
colour jitter; CYWS values: ColorJitter 0.1, RandomAffine(30°, translate 0.2, scale 0.8-1.5, border padding)).

The change mask follows the query's transform and keeps only what is visible in both views (the CYWS rule)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ...synthesis import color_jitter


@dataclass
class AugmentConfig:
    degrees: float = 30.0
    translate: float = 0.2
    scale: tuple[float, float] = (0.8, 1.5)
    jitter: float = 0.1  # brightness, contrast, saturation and hue


def random_affine(config: AugmentConfig, rng: np.random.Generator) -> torch.Tensor:
    """A random 3x3 affine map from output to input normalised coordinates ([-1, 1]², ``affine_grid`` convention)."""
    angle = math.radians(rng.uniform(-config.degrees, config.degrees))
    scale = rng.uniform(*config.scale)
    tx, ty = 2 * rng.uniform(-config.translate, config.translate, size=2)
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    return torch.tensor([[cos, -sin, tx], [sin, cos, ty], [0.0, 0.0, 1.0]], dtype=torch.float32)


def warp(image: torch.Tensor, matrix: torch.Tensor, mode: str = "bilinear", padding: str = "border") -> torch.Tensor:
    """Resample ``image [C, H, W]`` at ``matrix @ (x, y, 1)`` for every output pixel (normalised coordinates)."""
    grid = F.affine_grid(matrix[:2].unsqueeze(0), [1, *image.shape], align_corners=False)
    return F.grid_sample(image.unsqueeze(0), grid, mode=mode, padding_mode=padding, align_corners=False)[0]


def augment_pair(prompt: torch.Tensor, query: torch.Tensor, mask: torch.Tensor, config: AugmentConfig,
                 rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Independently transform prompt and query ``[3, S, S]``; the mask ``[1, S, S]`` (in the shared original
    frame) goes to the query's frame, restricted to points the prompt view also shows."""
    to_prompt, to_query = random_affine(config, rng), random_affine(config, rng)
    j = config.jitter
    prompt = color_jitter(warp(prompt, to_prompt), rng, brightness=j, contrast=j, saturation=j, hue=j)
    query = color_jitter(warp(query, to_query), rng, brightness=j, contrast=j, saturation=j, hue=j)
    # Query pixel x shows original point to_query x; the prompt shows it iff inverse(to_prompt) of it is in view.
    in_prompt = warp(torch.ones_like(mask), torch.linalg.inv(to_prompt) @ to_query, mode="nearest", padding="zeros")
    mask = (warp(mask, to_query, mode="nearest", padding="zeros") * in_prompt > 0.5).float()
    return prompt, query, mask
