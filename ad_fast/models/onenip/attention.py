"""Neighbour mask and learned 2-D positional embedding of the reconstruction transformer (tokens in raster order)."""

from __future__ import annotations

import torch
from torch import nn


def neighbour_size(height: int, width: int) -> tuple[int, int]:
    """The release's neighbourhood for an ``height x width`` feature map: ``(height // 2, width // 2)``."""
    return height // 2, width // 2


def neighbour_mask(height: int, width: int, neighbour: tuple[int, int] | None = None,
                   device: torch.device | None = None) -> torch.Tensor:
    """Boolean attention mask ``[N, N]`` (N = height·width, raster order), True where attention is forbidden.

    Token u = (r_u, c_u) may not attend to v = (r_v, c_v) when ``|r_u - r_v| <= n_h // 2`` and
    ``|c_u - c_v| <= n_w // 2`` ("a feature cannot see itself and its neighbours"); ``neighbour = (n_h, n_w)``
    defaults to :func:`neighbour_size`, a ``(2·(n//2)+1)``-square window clipped at the borders
    (7x7 at 14x14, 9x9 at 16x16, 11x11 at 20x20).

    Raises:
        ValueError: a non-positive size, or a window that masks every key of some query (rows would be NaN).
    """
    if height < 1 or width < 1:
        raise ValueError(f"height, width: expected positive sizes, got {height}x{width}")
    n_h, n_w = neighbour_size(height, width) if neighbour is None else neighbour
    reach_r, reach_c = n_h // 2, n_w // 2
    if reach_r >= height // 2 and reach_c >= width // 2:  # the centre query would see no key
        raise ValueError(f"neighbour: a {2 * reach_r + 1}x{2 * reach_c + 1} window masks every key of a "
                         f"{height}x{width} feature map; use a larger image or a smaller neighbourhood")
    rows = torch.arange(height, device=device).repeat_interleave(width)
    cols = torch.arange(width, device=device).repeat(height)
    near_r = (rows[:, None] - rows[None, :]).abs() <= reach_r
    near_c = (cols[:, None] - cols[None, :]).abs() <= reach_c
    return near_r & near_c


class LearnedPositionEmbedding(nn.Module):
    """Row and column tables ``[h, d/2]``, ``[w, d/2]`` (U(0, 1) init); position (i, j) → ``cat(col[j], row[i])``."""

    def __init__(self, height: int, width: int, dim: int = 256):
        super().__init__()
        self.row_embed = nn.Embedding(height, dim // 2)
        self.col_embed = nn.Embedding(width, dim // 2)
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)

    def forward(self) -> torch.Tensor:
        """→ ``[N, 1, d]`` in raster order (sequence-first, broadcast over the batch)."""
        height, width = self.row_embed.num_embeddings, self.col_embed.num_embeddings
        col = self.col_embed.weight.unsqueeze(0).expand(height, -1, -1)
        row = self.row_embed.weight.unsqueeze(1).expand(-1, width, -1)
        return torch.cat([col, row], dim=-1).flatten(0, 1).unsqueeze(1)
