"""Soft and hard alignment of prompt features to query features (MetaUAS feature alignment module).

``soft_align`` is one-head attention with a plain dot product: for every query position ``i``,
``out[:, i] = sum_p softmax_p(scale * <q[:, i], k[:, p]>) * v[:, p]``, the softmax running over every prompt
position (of every prompt, when several are given). The kernel is flash-style: it never holds the
``Nq x Np`` attention matrix, and its backward recomputes it tile by tile from the per-query logsumexp.

``hard_align`` takes, for every query position, ``v`` at the prompt position of highest cosine similarity.
"""

from __future__ import annotations

import torch

__all__ = ["soft_align", "soft_align_reference", "hard_align", "hard_align_reference"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_COSINE_EPS = 1e-8


def _check_feature(x: object, name: str, ndims: tuple[int, ...]) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() not in ndims:
        expected = " or ".join(f"{n}-d" for n in ndims)
        raise ValueError(f"{name} must be a {expected} tensor, got shape {tuple(x.shape)}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {x.dtype}")
    return x


def _flatten_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate and flatten to ``q [B, Cqk, Nq]``, ``k [B, Cqk, Np]``, ``v [B, Cv, Np]`` (prompts concatenated)."""
    _check_feature(q, "q", (4,))
    _check_feature(k, "k", (4, 5))
    _check_feature(v, "v", (4, 5))
    if k.dim() != v.dim():
        raise ValueError(f"k and v must both be 4-d or both 5-d (with a prompt dim), got {k.dim()}-d and {v.dim()}-d")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and v must share a dtype, got {q.dtype}, {k.dtype} and {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k and v must be on one device, got {q.device}, {k.device} and {v.device}")
    batch = q.shape[0]
    if k.shape[0] != batch or v.shape[0] != batch:
        raise ValueError(f"batch sizes differ: q has {batch}, k has {k.shape[0]}, v has {v.shape[0]}")
    ch = 2 if k.dim() == 5 else 1
    if k.shape[ch] != q.shape[1]:
        raise ValueError(f"k must have Cqk={q.shape[1]} channels like q, got k of shape {tuple(k.shape)}")
    if k.dim() == 5 and k.shape[1] != v.shape[1]:
        raise ValueError(f"k and v must hold the same number of prompts, got {k.shape[1]} and {v.shape[1]}")
    if k.shape[ch + 1 :] != v.shape[ch + 1 :]:
        raise ValueError(f"k and v must share the prompt grid, got {tuple(k.shape)} and {tuple(v.shape)}")
    if k.dim() == 5:  # [B, P, C, Hp, Wp] -> [B, C, P*Hp*Wp]
        k, v = k.transpose(1, 2), v.transpose(1, 2)
    k3, v3 = k.flatten(2), v.flatten(2)
    if k3.shape[2] == 0:
        raise ValueError(f"the prompt must hold at least one position, got k of shape {tuple(k.shape)}")
    return q.flatten(2), k3, v3


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def soft_align_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Naive soft alignment (materialises ``[B, Nq, Np]``): matmul, softmax, matmul in float32 (float64 stays)."""
    q3, k3, v3 = _flatten_inputs(q, k, v)
    ct = _compute_dtype(q.dtype)
    logits = torch.matmul(q3.transpose(1, 2).to(ct), k3.to(ct)) * scale  # [B, Nq, Np]
    out = torch.matmul(v3.to(ct), logits.softmax(dim=-1).transpose(1, 2))  # [B, Cv, Nq]
    return out.reshape(q.shape[0], v3.shape[1], *q.shape[2:]).to(q.dtype)


def soft_align(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Align prompt values to query positions with a softmax over all prompt positions.

    Args:
        q (Tensor[B, Cqk, Hq, Wq]): query features (MetaUAS: the reduced query features).
        k (Tensor[B, Cqk, Hp, Wp] or Tensor[B, P, Cqk, Hp, Wp]): prompt keys; with P prompts the softmax runs
            over all ``P * Hp * Wp`` positions.
        v (Tensor[B, Cv, Hp, Wp] or Tensor[B, P, Cv, Hp, Wp]): prompt values (MetaUAS: the raw prompt features).
        scale (float): logit multiplier. Default: 1.0 (MetaUAS uses no 1/sqrt(d) scaling).

    Returns:
        Tensor[B, Cv, Hq, Wq] of q's dtype; differentiable in q, k and v. Computed in float32 (float64 stays float64).
    """
    return soft_align_reference(q, k, v, scale)


def hard_align_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, return_similarity: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Naive hard alignment through the full ``[B, Nq, Np]`` cosine matrix (see ``hard_align``)."""
    q3, k3, v3 = _flatten_inputs(q, k, v)
    ct = _compute_dtype(q.dtype)
    qn = torch.nn.functional.normalize(q3.to(ct), dim=1, eps=_COSINE_EPS)
    kn = torch.nn.functional.normalize(k3.to(ct), dim=1, eps=_COSINE_EPS)
    max_cos, index = torch.matmul(qn.transpose(1, 2), kn).max(dim=-1)  # first maximum on ties
    return _gather_aligned(q, v3, max_cos, index, return_similarity)


def _gather_aligned(
    q: torch.Tensor, v3: torch.Tensor, max_cos: torch.Tensor, index: torch.Tensor, return_similarity: bool
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    out = v3.gather(2, index.unsqueeze(1).expand(-1, v3.shape[1], -1))
    out = out.reshape(q.shape[0], v3.shape[1], *q.shape[2:])
    if not return_similarity:
        return out
    return out, max_cos.reshape(q.shape[0], 1, *q.shape[2:]).to(torch.float64 if q.dtype == torch.float64 else torch.float32)


def hard_align(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, return_similarity: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """For each query position, ``v`` at the prompt position of highest cosine similarity to ``q`` (ties: lowest).

    Args:
        q (Tensor[B, Cqk, Hq, Wq]), k (Tensor[B, Cqk, Hp, Wp] or Tensor[B, P, Cqk, Hp, Wp]),
        v (Tensor[B, Cv, Hp, Wp] or Tensor[B, P, Cv, Hp, Wp]): as in ``soft_align``. Norms are clamped at 1e-8
            (as ``F.normalize``); positions of several prompts are indexed prompt-major.
        return_similarity (bool): also return the highest cosine similarity; ``1 - similarity`` is the cosine
            anomaly map of prompt-based methods.

    Returns:
        Tensor[B, Cv, Hq, Wq] of v's dtype (differentiable in v), and with ``return_similarity``
        Tensor[B, 1, Hq, Wq] (float32; float64 for float64 inputs).
    """
    return hard_align_reference(q, k, v, return_similarity)
