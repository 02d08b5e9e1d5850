"""Nearest-neighbour search as plain graph ops (MatMul + TopK), for banks embedded in an exported graph.

The same ranking keys and distance formula as :func:`ad_fast.ops.knn` (``||b||² - 2 q·b``, then
``sqrt(max(key + ||q||², 0))``), over the whole bank at once: the graph holds ``B · N · M`` keys in float32 for
``B`` images of ``N`` patches against ``M`` bank rows.
"""

from __future__ import annotations

import torch
from torch import nn

from ..ops.knn import NORM_EPS, _finish


class NearestL2(nn.Module):
    """Top-1 L2 neighbour of each query row in a bank stored as a graph initializer.

    Args:
        rows (Tensor[M, D]): the bank; kept in ``dtype`` (float16 halves the file; the search computes in float32).
        dtype: storage dtype of the rows in the graph.
    """

    def __init__(self, rows: torch.Tensor, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        stored = rows.detach().to("cpu", dtype).contiguous()
        self.register_buffer("rows", stored)
        self.register_buffer("sq_norms", stored.float().pow(2).sum(1))

    def forward(self, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """query (Tensor[B, N, D]) → (distance Tensor[B, N], index Tensor[B, N] int64) of the nearest row."""
        rows = self.rows.float()
        key = self.sq_norms - 2.0 * (query @ rows.T)
        best, index = torch.topk(key, 1, dim=-1, largest=False)
        q_sq = (query * query).sum(-1, keepdim=True)
        return _finish(best, q_sq, q_sq.sqrt(), "l2")[..., 0], index[..., 0]

    def gather(self, index: torch.Tensor) -> torch.Tensor:
        """Rows at ``index`` (any int shape S) → Tensor[*S, D] float32."""
        return self.rows[index].float()


class NearestCosine(nn.Module):
    """Top-1 cosine neighbour (largest cosine similarity) of each query row in an embedded bank ``[M, D]``."""

    def __init__(self, rows: torch.Tensor) -> None:
        super().__init__()
        rows = rows.detach().to("cpu", torch.float32)
        self.register_buffer("inv_norms", 1.0 / rows.pow(2).sum(1).sqrt().clamp_min(NORM_EPS))
        self.register_buffer("rows", rows.contiguous())

    def forward(self, query: torch.Tensor) -> torch.Tensor:
        """query (Tensor[B, D]) → index Tensor[B] int64 of the most similar row."""
        key = -(query @ self.rows.T) * self.inv_norms
        return torch.topk(key, 1, dim=-1, largest=False)[1][:, 0]
