"""DMAD's frozen patch feature encoder F_Φ (PatchCore-style locally aware patch features)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def aggregate_layer(features: torch.Tensor, embed_dim: int, grid: tuple[int, int], patch_size: int = 3) -> torch.Tensor:
    """3x3 neighbourhood aggregation of one layer, pooled to ``embed_dim`` channels and resized to ``grid``.

    Every position is described by its ``patch_size``² neighbourhood (zero padding), flattened channel-major as
    (C, kh, kw) and average-pooled to ``embed_dim`` values (``adaptive_avg_pool1d``; for C·9 = 3·embed_dim this is
    the mean of each kernel row of each channel). Pooling over channels and bilinear resizing are both linear
    and act on different axes, so pooling first gives the same result as PatchCore's resize-then-pool.

    Args:
        features (Tensor[B, C, h, w]): one backbone layer.
    Returns:
        Tensor[B, embed_dim, H0, W0] with (H0, W0) = ``grid``.
    """
    b, c, h, w = features.shape
    patches = F.unfold(features, kernel_size=patch_size, padding=patch_size // 2)  # [B, C*9, h*w]
    pooled = F.adaptive_avg_pool1d(patches.transpose(1, 2).reshape(b * h * w, 1, -1), embed_dim)
    pooled = pooled.reshape(b, h, w, embed_dim).permute(0, 3, 1, 2)
    if (h, w) != tuple(grid):
        pooled = F.interpolate(pooled, size=grid, mode="bilinear", align_corners=False)
    return pooled


class PatchFeatureEncoder(nn.Module):
    """Backbone layers -> one ``embed_dim``-d feature per patch of the first (finest) selected layer's grid.

    Per layer: 3x3 local aggregation and pooling to ``embed_dim`` (:func:`aggregate_layer`); the layers are then
    concatenated per patch and average-pooled to ``embed_dim`` (PatchCore's "Aggregator": consecutive pairs for
    two layers). No learnable parameters: the encoder is frozen and deterministic.
    """

    def __init__(self, backbone: nn.Module, mean: tuple[float, ...], std: tuple[float, ...], embed_dim: int = 1536,
                 patch_size: int = 3) -> None:
        super().__init__()
        self.backbone = backbone
        self.embed_dim = int(embed_dim)
        self.patch_size = int(patch_size)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch features of images in [0, 1].

        Args:
            images (Tensor[B, 3, H, W], float32): RGB in [0, 1] (normalised here).
        Returns:
            (Tensor[B, N, embed_dim], (H0, W0)): features row-major over the patch grid, N = H0·W0.
        """
        layers = self.backbone((images - self.mean) / self.std)
        grid = tuple(layers[0].shape[-2:])
        pooled = [aggregate_layer(f, self.embed_dim, grid, self.patch_size) for f in layers]
        b = images.shape[0]
        stacked = torch.stack(pooled, dim=1)  # [B, L, D, H0, W0]
        stacked = stacked.permute(0, 3, 4, 1, 2).reshape(b * grid[0] * grid[1], 1, -1)
        feats = F.adaptive_avg_pool1d(stacked, self.embed_dim).reshape(b, grid[0] * grid[1], self.embed_dim)
        return feats, grid
