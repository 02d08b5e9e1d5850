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


def _layer_maps(channels: list[int], embed_dim: int, patch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, ``A`` (float64 ``[C_l·p², K_l]``) and the ``K_l`` embedding columns it writes: the layer's
    features are ``u @ A`` for its unfolded neighbourhood ``u`` (flattened channel-major as (C, kh, kw))."""
    final = pooling_matrix(len(channels) * embed_dim, embed_dim)
    maps = []
    for index, c in enumerate(channels):
        combined = pooling_matrix(c * patch_size**2, embed_dim) @ final[index * embed_dim : (index + 1) * embed_dim]
        columns = torch.nonzero(combined.abs().sum(0) > 0, as_tuple=True)[0]
        maps.append((combined[:, columns], columns))
    return maps


def _as_conv(matrix: torch.Tensor, channels: int, patch_size: int) -> torch.Tensor:
    """``[C·p², K]`` -> float32 conv weight ``[K, C, p, p]``."""
    return matrix.T.reshape(matrix.shape[1], channels, patch_size, patch_size).float().contiguous()


def aggregation_weights(channels: list[int], embed_dim: int, patch_size: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, a conv weight ``[K_l, C_l, p, p]`` and the output channels ``[K_l]`` it writes.

    PatchCore's embedding is linear in each layer's unfolded p x p neighbourhood (flattened channel-major as
    (C, kh, kw)): per-layer ``adaptive_avg_pool1d`` to ``embed_dim``, then ``adaptive_avg_pool1d`` of the
    concatenated layers to ``embed_dim``. Both poolings compose into one matrix ``[C_l·p², embed_dim]``;
    as a p x p convolution it needs no unfolded copy. Only the output channels a layer feeds (its slice
    of the final pooling) are computed.
    """
    return [(_as_conv(a, c, patch_size), columns) for (a, columns), c in
            zip(_layer_maps(channels, embed_dim, patch_size), channels)]


def isometric_weights(channels: list[int], embed_dim: int, patch_size: int = 3
                      ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """Conv weights as :func:`aggregation_weights` for coordinates with the same pairwise distances as the
    ``embed_dim``-d features, in fewer dimensions where a layer allows; and ``basis`` (float64
    ``[D', embed_dim]``, orthonormal rows) with ``features = coordinates @ basis``.

    A layer whose neighbourhood has fewer values (n = C·p²) than the K embedding columns it feeds spans only n
    dimensions there: with the Cholesky factor ``A Aᵀ = R Rᵀ`` (unique, so the coordinates do not depend on the
    machine), ``u @ R`` has the distances of ``u @ A``, since ``A = R B`` with ``B = R⁻¹ A`` of orthonormal rows.
    Other layers keep their K columns. Layers that share an embedding column keep the full embedding.
    (efficientnet_lite0's stride-8/16 layers: 40·9 + 768 = 1128 coordinates instead of 1536.)
    """
    maps = _layer_maps(channels, embed_dim, patch_size)
    written = torch.cat([columns for _, columns in maps])
    if written.unique().numel() != written.numel():
        return aggregation_weights(channels, embed_dim, patch_size), torch.eye(embed_dim, dtype=torch.float64)
    weights, rows, offset = [], [], 0
    for (a, columns), c in zip(maps, channels):
        factor, info = torch.linalg.cholesky_ex(a @ a.T)
        if a.shape[0] < a.shape[1] and info == 0:
            coordinates, basis = factor, torch.linalg.solve_triangular(factor, a, upper=False)
        else:
            coordinates, basis = a, torch.eye(len(columns), dtype=torch.float64)
        width = coordinates.shape[1]
        weights.append((_as_conv(coordinates, c, patch_size), torch.arange(offset, offset + width)))
        row = torch.zeros(width, embed_dim, dtype=torch.float64)
        row[:, columns] = basis
        rows.append(row)
        offset += width
    return weights, torch.cat(rows)


class PatchFeatureEncoder(nn.Module):
    """Backbone layers -> one ``embed_dim``-d feature per patch of the first (finest) selected layer's grid.

    Per layer: 3x3 local aggregation (zero padding) pooled to ``embed_dim`` values; coarser layers are resized
    bilinearly (align_corners=False) to the first layer's grid; the layers are then concatenated per patch and
    average-pooled to ``embed_dim`` (PatchCore's "Aggregator": consecutive pairs for two layers). Pooling over
    channels and bilinear resizing are linear maps on different axes, so the order of the two does not matter;
    everything is fused into one convolution per layer (:func:`aggregation_weights`). No learnable parameters:
    the encoder is frozen and deterministic.

    ``isometric=True``: the features come as the coordinates of :func:`isometric_weights` instead, ``feature_dim``
    (<= ``embed_dim``) values per patch with the same pairwise distances (what a distance-only bank search needs;
    ``coordinates @ basis(channels)`` gives the ``embed_dim``-d features back).
    """

    def __init__(self, backbone: nn.Module, mean: tuple[float, ...], std: tuple[float, ...], embed_dim: int = 1536,
                 patch_size: int = 3, isometric: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.embed_dim = int(embed_dim)
        self.patch_size = int(patch_size)
        self.isometric = bool(isometric)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self._weights: dict[tuple[int, ...], tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]] = {}
        self._consecutive_layers: dict[tuple[int, ...], bool] = {}

    def _layout(self, channels: tuple[int, ...]) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
        """(per-layer conv weights and output channels, basis ``[feature_dim, embed_dim]``) for these layers."""
        if channels not in self._weights:
            if self.isometric:
                self._weights[channels] = isometric_weights(list(channels), self.embed_dim, self.patch_size)
            else:
                self._weights[channels] = (aggregation_weights(list(channels), self.embed_dim, self.patch_size),
                                           torch.eye(self.embed_dim, dtype=torch.float64))
        return self._weights[channels]

    def _consecutive(self, channels: tuple[int, ...]) -> bool:
        """Whether the layers write consecutive, disjoint column ranges that fill the output in order (then the
        output is their concatenation)."""
        if channels not in self._consecutive_layers:
            weights, basis = self._layout(channels)
            written = torch.cat([columns.cpu() for _, columns in weights])
            self._consecutive_layers[channels] = torch.equal(written, torch.arange(basis.shape[0]))
        return self._consecutive_layers[channels]

    def feature_dim(self, channels: tuple[int, ...]) -> int:
        """Values per patch for backbone layers of these channel counts."""
        return self._layout(tuple(channels))[1].shape[0]

    def basis(self, channels: tuple[int, ...]) -> torch.Tensor:
        """float64 ``[feature_dim, embed_dim]`` with orthonormal rows: ``embed_dim``-d features = output @ basis."""
        return self._layout(tuple(channels))[1]

    def _aggregation(self, channels: tuple[int, ...], device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
        weights, basis = self._layout(channels)
        if weights[0][0].device != device:
            weights = [(w.to(device), c.to(device)) for w, c in weights]
            self._weights[channels] = (weights, basis)
        return weights

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch features of images in [0, 1].

        Args:
            images (Tensor[B, 3, H, W], float32): RGB in [0, 1] (normalised here).
        Returns:
            (Tensor[B, N, D], (H0, W0)): features row-major over the patch grid, N = H0·W0, D = ``embed_dim``
            (``feature_dim`` when isometric).
        """
        x = ((images - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        layers = self.backbone(x)
        grid = tuple(layers[0].shape[-2:])
        channels = tuple(f.shape[1] for f in layers)
        weights = self._aggregation(channels, images.device)
        parts = []
        for feats, (conv, _) in zip(layers, weights):
            pooled = F.conv2d(feats, conv, padding=self.patch_size // 2)
            if tuple(pooled.shape[-2:]) != grid:
                pooled = F.interpolate(pooled, size=grid, mode="bilinear", align_corners=False)
            parts.append(pooled.permute(0, 2, 3, 1))
        if self._consecutive(channels):  # one copy, no zero-filled output to add into
            out = torch.cat(parts, 3)
        else:
            out = images.new_zeros(images.shape[0], grid[0], grid[1], self.feature_dim(channels))
            for part, (_, columns) in zip(parts, weights):
                out.index_add_(3, columns, part)
        return out.reshape(images.shape[0], grid[0] * grid[1], out.shape[-1]), grid
