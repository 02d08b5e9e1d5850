"""DMAD's frozen patch feature encoder F_Φ (PatchCore-style locally aware patch features)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pooling_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """``Tensor[n_in, n_out]`` (float64) with ``v @ M == adaptive_avg_pool1d(v, n_out)`` for any row vector ``v``.

    Output j averages inputs ``[floor(j·n_in/n_out), ceil((j+1)·n_in/n_out))`` (PyTorch's adaptive pooling windows).
    """
    j = torch.arange(n_out)
    start = torch.div(j * n_in, n_out, rounding_mode="floor")
    end = torch.div((j + 1) * n_in + n_out - 1, n_out, rounding_mode="floor")
    rows = torch.arange(n_in).unsqueeze(1)
    inside = (rows >= start) & (rows < end)
    return inside.double() / (end - start).double()


def aggregation_weights(channels: list[int], embed_dim: int, patch_size: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, a conv weight ``[K_l, C_l, p, p]`` and the output channels ``[K_l]`` it writes.

    PatchCore's embedding is linear in each layer's unfolded p x p neighbourhood (flattened channel-major as
    (C, kh, kw)): per-layer ``adaptive_avg_pool1d`` to ``embed_dim``, then ``adaptive_avg_pool1d`` of the
    concatenated layers to ``embed_dim``. Both poolings compose into one matrix ``[C_l·p², embed_dim]``;
    as a p x p convolution it needs no unfolded copy. Only the output channels a layer feeds (its slice
    of the final pooling) are computed.
    """
    final = pooling_matrix(len(channels) * embed_dim, embed_dim)
    weights = []
    for index, c in enumerate(channels):
        combined = pooling_matrix(c * patch_size**2, embed_dim) @ final[index * embed_dim : (index + 1) * embed_dim]
        columns = torch.nonzero(combined.abs().sum(0) > 0, as_tuple=True)[0]
        conv = combined[:, columns].T.reshape(len(columns), c, patch_size, patch_size)
        weights.append((conv.float().contiguous(), columns))
    return weights


class PatchFeatureEncoder(nn.Module):
    """Backbone layers -> one ``embed_dim``-d feature per patch of the first (finest) selected layer's grid.

    Per layer: 3x3 local aggregation (zero padding) pooled to ``embed_dim`` values; coarser layers are resized
    bilinearly (align_corners=False) to the first layer's grid; the layers are then concatenated per patch and
    average-pooled to ``embed_dim`` (PatchCore's "Aggregator": consecutive pairs for two layers). Pooling over
    channels and bilinear resizing are linear maps on different axes, so the order of the two does not matter;
    everything is fused into one convolution per layer (:func:`aggregation_weights`). No learnable parameters:
    the encoder is frozen and deterministic.
    """

    def __init__(self, backbone: nn.Module, mean: tuple[float, ...], std: tuple[float, ...], embed_dim: int = 1536,
                 patch_size: int = 3) -> None:
        super().__init__()
        self.backbone = backbone
        self.embed_dim = int(embed_dim)
        self.patch_size = int(patch_size)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self._weights: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def _aggregation(self, channels: tuple[int, ...], device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if channels not in self._weights:
            self._weights[channels] = aggregation_weights(list(channels), self.embed_dim, self.patch_size)
        weights = self._weights[channels]
        if weights[0][0].device != device:
            weights = self._weights[channels] = [(w.to(device), c.to(device)) for w, c in weights]
        return weights

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch features of images in [0, 1].

        Args:
            images (Tensor[B, 3, H, W], float32): RGB in [0, 1] (normalised here).
        Returns:
            (Tensor[B, N, embed_dim], (H0, W0)): features row-major over the patch grid, N = H0·W0.
        """
        x = ((images - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        layers = self.backbone(x)
        grid = tuple(layers[0].shape[-2:])
        weights = self._aggregation(tuple(f.shape[1] for f in layers), images.device)
        out = images.new_zeros(images.shape[0], grid[0], grid[1], self.embed_dim)
        for feats, (conv, columns) in zip(layers, weights):
            pooled = F.conv2d(feats, conv, padding=self.patch_size // 2)
            if tuple(pooled.shape[-2:]) != grid:
                pooled = F.interpolate(pooled, size=grid, mode="bilinear", align_corners=False)
            out.index_add_(3, columns, pooled.permute(0, 2, 3, 1))
        return out.reshape(images.shape[0], grid[0] * grid[1], self.embed_dim), grid
