"""Paired geometric and photometric augmentation for change pairs (the paper's scale/translation/rotation and
colour jitter; CYWS values: ColorJitter 0.1, RandomAffine(30°, translate 0.2, scale 0.8-1.5, border padding)).

The change mask follows the query's transform and keeps only what is visible in both views (the CYWS rule)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class AugmentConfig:
    degrees: float = 30.0
    translate: float = 0.2
    scale: tuple[float, float] = (0.8, 1.5)
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1
    hue: float = 0.1


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def random_affine(config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """A random 3x3 affine map from output to input normalised coordinates ([-1, 1]², ``affine_grid`` convention)."""
    angle = math.radians(_uniform(generator, -config.degrees, config.degrees))
    scale = _uniform(generator, *config.scale)
    tx, ty = (2 * _uniform(generator, -config.translate, config.translate) for _ in range(2))
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    return torch.tensor([[cos, -sin, tx], [sin, cos, ty], [0.0, 0.0, 1.0]])


def warp(image: torch.Tensor, matrix: torch.Tensor, mode: str = "bilinear", padding: str = "border") -> torch.Tensor:
    """Resample ``image [C, H, W]`` at ``matrix @ (x, y, 1)`` for every output pixel (normalised coordinates)."""
    grid = F.affine_grid(matrix[:2].unsqueeze(0), [1, *image.shape], align_corners=False)
    return F.grid_sample(image.unsqueeze(0), grid, mode=mode, padding_mode=padding, align_corners=False)[0]


def color_jitter(image: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Random brightness, contrast, saturation (factors in 1 ± x) and hue rotation (± x turns) of ``[3, H, W]``."""
    image = image * _uniform(generator, 1 - config.brightness, 1 + config.brightness)
    gray = (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]).unsqueeze(0)
    image = gray.mean() + (image - gray.mean()) * _uniform(generator, 1 - config.contrast, 1 + config.contrast)
    gray = (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]).unsqueeze(0)
    image = gray + (image - gray) * _uniform(generator, 1 - config.saturation, 1 + config.saturation)
    theta = 2 * math.pi * _uniform(generator, -config.hue, config.hue)
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    rotate = torch.tensor([[1.0, 0.0, 0.0], [0.0, math.cos(theta), -math.sin(theta)], [0.0, math.sin(theta), math.cos(theta)]])
    matrix = torch.linalg.inv(to_yiq) @ rotate @ to_yiq
    return torch.einsum("ij,jhw->ihw", matrix, image).clamp(0.0, 1.0)


def augment_pair(prompt: torch.Tensor, query: torch.Tensor, mask: torch.Tensor, config: AugmentConfig,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Independently transform prompt and query ``[3, S, S]``; the mask ``[1, S, S]`` (in the shared original
    frame) goes to the query's frame, restricted to points the prompt view also shows."""
    to_prompt, to_query = random_affine(config, generator), random_affine(config, generator)
    prompt = color_jitter(warp(prompt, to_prompt), config, generator)
    query = color_jitter(warp(query, to_query), config, generator)
    # Query pixel x shows original point to_query x; the prompt shows it iff inverse(to_prompt) of it is in view.
    query_to_prompt = torch.linalg.inv(to_prompt) @ to_query
    in_prompt = warp(torch.ones_like(mask), query_to_prompt, mode="nearest", padding="zeros")
    mask = (warp(mask, to_query, mode="nearest", padding="zeros") * in_prompt > 0.5).float()
    return prompt, query, mask
