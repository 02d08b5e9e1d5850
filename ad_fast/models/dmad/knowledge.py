"""Knowledge enhancement (paper Eq. 6-10): residuals and cross-attention to both banks, shared projection P_θ."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ATTENTION_MODES = ("image", "per_patch", "none")


def _xavier_linear(dim_in: int, dim_out: int, bias: bool = True) -> nn.Linear:
    layer = nn.Linear(dim_in, dim_out, bias=bias)
    nn.init.xavier_normal_(layer.weight)
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


class KnowledgeEnhancer(nn.Module):
    """Enhanced representation o = Cat(P_θ(q), P_θ(k_n), P_θ(k_a)) of each patch.

    k_n = (q - NN_n(q)) [+ A_n] and k_a = (q - NN_a(q)) [+ A_a] (Eq. 7, 9). The cross-attention term (Eq. 8)
    takes the nearest neighbours as queries and linear maps of q as keys and values, one K/V pair shared by the
    two branches:

    - ``attention="image"`` (paper reading, default for unsupervised DMAD): scaled dot-product attention over
      the N patch tokens of one image, ``softmax(NN K^T / sqrt(C)) V``.
    - ``attention="per_patch"`` (the candidate release): a one-token softmax is 1, so A = V(q).
    - ``attention="none"`` (semi-supervised DMAD): residuals only.
    """

    def __init__(self, dim: int, attention: str = "image") -> None:
        super().__init__()
        if attention not in ATTENTION_MODES:
            raise ValueError(f"attention: expected one of {ATTENTION_MODES}, got {attention!r}")
        self.attention = attention
        if attention != "none":
            self.key = _xavier_linear(dim, dim)
            self.value = _xavier_linear(dim, dim)
        self.projection = _xavier_linear(dim, dim)

    def knowledge(self, q: torch.Tensor, nn_normal: torch.Tensor, nn_abnormal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(k_n, k_a), each shaped like ``q`` ``[..., N, C]``. Image attention needs whole images ``[B, N, C]``."""
        k_n, k_a = q - nn_normal, q - nn_abnormal
        if self.attention == "image":
            keys, values = self.key(q).unsqueeze(-3), self.value(q).unsqueeze(-3)  # one head: [B, 1, N, C]
            k_n = k_n + F.scaled_dot_product_attention(nn_normal.unsqueeze(-3), keys, values).squeeze(-3)
            k_a = k_a + F.scaled_dot_product_attention(nn_abnormal.unsqueeze(-3), keys, values).squeeze(-3)
        elif self.attention == "per_patch":
            values = self.value(q)
            k_n, k_a = k_n + values, k_a + values
        return k_n, k_a

    def forward(self, q: torch.Tensor, nn_normal: torch.Tensor, nn_abnormal: torch.Tensor) -> torch.Tensor:
        """Args: q, nn_normal, nn_abnormal (Tensor[B, N, C]). Returns o (Tensor[B, N, 3C])."""
        k_n, k_a = self.knowledge(q, nn_normal, nn_abnormal)
        return torch.cat([self.projection(q), self.projection(k_n), self.projection(k_a)], dim=-1)


class ScoreMapper(nn.Module):
    """Ψ: per-patch MLP, four (Linear, BatchNorm1d, LeakyReLU(0.2)) layers with skips between layers 2-4,
    then Linear(hidden, 1) without bias. Normal patches are trained towards Ψ ≥ +0.5."""

    def __init__(self, in_dim: int, hidden: int = 1024, layers: int = 4, slope: float = 0.2) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"layers: expected >= 1, got {layers}")

        def block(dim_in: int) -> nn.Sequential:
            return nn.Sequential(_xavier_linear(dim_in, hidden), nn.BatchNorm1d(hidden), nn.LeakyReLU(slope))

        self.stem = block(in_dim)
        self.blocks = nn.ModuleList(block(hidden) for _ in range(layers - 1))
        self.head = _xavier_linear(hidden, 1, bias=False)

    def forward(self, o: torch.Tensor) -> torch.Tensor:
        """Args: o (Tensor[P, in_dim]). Returns Ψ(o) (Tensor[P])."""
        h = self.stem(o)
        for block in self.blocks:
            h = h + block(h)
        return self.head(h).squeeze(-1)
