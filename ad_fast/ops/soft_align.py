"""Soft and hard alignment of prompt features to query features (MetaUAS feature alignment module).

``soft_align`` is one-head attention with a plain dot product: for every query position ``i``,
``out[:, i] = sum_p softmax_p(scale * <q[:, i], k[:, p]>) * v[:, p]``, the softmax running over every prompt
position (of every prompt, when several are given). The kernel is flash-style: it never holds the
``Nq x Np`` attention matrix, and its backward recomputes it tile by tile from the per-query logsumexp.

``hard_align`` takes, for every query position, ``v`` at the prompt position of highest cosine similarity.

Both reject NaN or Inf in ``q``, ``k`` or ``v`` with a ValueError naming the argument (kernels and references).
``soft_align`` also rejects inputs whose logits could overflow the compute dtype (see :func:`_check_logit_range`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._extension import has_ops
from ._backend import use_kernel
from ._validate import FLOAT_DTYPES, check_same_device, check_tensor, values_readable

__all__ = ["soft_align", "soft_align_reference", "hard_align", "hard_align_reference"]

COSINE_EPS = 1e-8  # norm clamp of hard_align, as torch.nn.functional.normalize


def _flattened(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate; return ``q [B, Cqk, Nq]``, ``k [B, Cqk, Np]``, ``v [B, Cv, Np]`` (several prompts concatenated)."""
    check_tensor(q, "q", ndim=4, dtypes=FLOAT_DTYPES, allow_empty=True)
    check_tensor(k, "k", ndim=(4, 5), dtypes=FLOAT_DTYPES, allow_empty=True)
    check_tensor(v, "v", ndim=(4, 5), dtypes=FLOAT_DTYPES, allow_empty=True)
    check_same_device({"q": q, "k": k, "v": v})
    for name, t in (("q", q), ("k", k), ("v", v)):  # NaN/Inf: rejected by the kernels and references alike
        check_tensor(t, name, dtypes=None, allow_empty=True, finite=True)
    if k.dim() != v.dim():
        raise ValueError(f"v: expected a {k.dim()}-d tensor like k (with or without a prompt dim), got {v.dim()}-d")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"k, v: expected dtype {q.dtype} like q, got {k.dtype} and {v.dtype}")
    batch = q.shape[0]
    if k.shape[0] != batch or v.shape[0] != batch:
        raise ValueError(f"k, v: expected batch size {batch} like q, got {k.shape[0]} and {v.shape[0]}")
    ch = k.dim() - 3
    if k.shape[ch] != q.shape[1]:
        raise ValueError(f"k: expected Cqk={q.shape[1]} channels like q, got shape {tuple(k.shape)}")
    if k.dim() == 5 and k.shape[1] != v.shape[1]:
        raise ValueError(f"v: expected {k.shape[1]} prompts like k, got shape {tuple(v.shape)}")
    if k.shape[ch + 1 :] != v.shape[ch + 1 :]:
        raise ValueError(f"v: expected the prompt grid {tuple(k.shape[ch + 1:])} of k, got shape {tuple(v.shape)}")
    if k.dim() == 5:  # [B, P, C, Hp, Wp] -> [B, C, P * Hp * Wp], prompt-major
        k, v = k.transpose(1, 2), v.transpose(1, 2)
    k3, v3 = k.flatten(2), v.flatten(2)
    if k3.shape[2] == 0:
        raise ValueError(f"k: expected at least one prompt position, got shape {tuple(k.shape)}")
    return q.flatten(2), k3, v3


def _check_logit_range(q3: torch.Tensor, k3: torch.Tensor, scale: float) -> None:
    """Refuse a non-finite ``scale``, and inputs where ``|scale| * max||q_i|| * max||k_p||`` (norms in float64), a
    bound on every logit by Cauchy-Schwarz, exceeds the compute dtype's largest finite value: a logit could turn
    Inf and the softmax NaN. The kernels check the same bound in C++ (``check_logit_range``) with the same message,
    so the kernel path is not checked twice."""
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    if q3.numel() == 0 or k3.numel() == 0 or scale == 0.0 or not values_readable():
        return
    q_norm = float(torch.linalg.vector_norm(q3.double(), dim=1).max())
    k_norm = float(torch.linalg.vector_norm(k3.double(), dim=1).max())
    if q_norm == 0.0 or k_norm == 0.0:
        return
    ct = _compute_dtype(q3.dtype)
    limit = torch.finfo(ct).max
    bound = abs(scale) * q_norm * k_norm
    if not (math.isfinite(bound) and bound <= limit):
        raise ValueError(
            f"q, k, scale: |scale| * max||q|| * max||k|| = {bound:g} exceeds the largest finite {str(ct)[6:]} "
            f"({limit:g}), so the attention logits could overflow; rescale q, k or scale"
        )


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _unflatten(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``[B, C, Nq]`` -> ``[B, C, Hq, Wq]`` on q's grid."""
    return x.reshape(x.shape[0], x.shape[1], *q.shape[2:])


def _kernel_runs(op: str, x: torch.Tensor, backend: str | None) -> bool:
    # float64 has no CUDA kernel: the reference serves it there.
    return use_kernel(op, x.device, backend) and not (x.is_cuda and x.dtype == torch.float64)


def soft_align_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Naive :func:`soft_align` (materialises ``[B, Nq, Np]``): matmul, softmax, matmul; differentiable."""
    q3, k3, v3 = _flattened(q, k, v)
    _check_logit_range(q3, k3, float(scale))
    ct = _compute_dtype(q.dtype)
    logits = torch.matmul(q3.transpose(1, 2).to(ct), k3.to(ct)) * scale  # [B, Nq, Np]
    out = torch.matmul(v3.to(ct), logits.softmax(dim=-1).transpose(1, 2))  # [B, Cv, Nq]
    return _unflatten(out, q).to(q.dtype)


def soft_align(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float = 1.0, backend: str | None = None
) -> torch.Tensor:
    """Align prompt values to query positions with a softmax over all prompt positions.

    ``out[b, :, i] = sum_p softmax_p(scale * <q[b, :, i], k[b, :, p]>) v[b, :, p]``.

    Args:
        q (Tensor[B, Cqk, Hq, Wq]): query features (MetaUAS: the reduced query features).
        k (Tensor[B, Cqk, Hp, Wp] or Tensor[B, P, Cqk, Hp, Wp]): prompt keys; with P prompts the softmax runs
            over all ``P * Hp * Wp`` positions.
        v (Tensor[B, Cv, Hp, Wp] or Tensor[B, P, Cv, Hp, Wp]): prompt values (MetaUAS: the raw prompt features).
        scale (float): logit multiplier. Default: 1.0 (MetaUAS uses no 1/sqrt(d) scaling).
        backend (None | "auto" | "kernel" | "reference"): overrides the global choice (see ``ad_fast.ops``).

    Returns:
        Tensor[B, Cv, Hq, Wq] of q's dtype, differentiable in q, k and v. Arithmetic is float32 (float64 stays
        float64); any strides are accepted. The kernel's memory beyond inputs and output is O(B * Nq) plus
        one tile per thread, forward and backward.
    """
    q3, k3, v3 = _flattened(q, k, v)
    scale = float(scale)
    if not _kernel_runs("soft_align", q, backend):
        return soft_align_reference(q, k, v, scale)
    out, _ = torch.ops.ad_fast.soft_align(q3, k3, v3, scale)
    return _unflatten(out, q)


def hard_align_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, return_similarity: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Naive :func:`hard_align` through the full ``[B, Nq, Np]`` cosine matrix."""
    q3, k3, v3 = _flattened(q, k, v)
    ct = _compute_dtype(q.dtype)
    qn = F.normalize(q3.to(ct), dim=1, eps=COSINE_EPS)
    kn = F.normalize(k3.to(ct), dim=1, eps=COSINE_EPS)
    max_cos, index = torch.matmul(qn.transpose(1, 2), kn).max(dim=-1)  # the first maximum on ties
    return _gathered(q, v3, max_cos, index, return_similarity)


def _gathered(
    q: torch.Tensor, v3: torch.Tensor, max_cos: torch.Tensor, index: torch.Tensor, return_similarity: bool
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    out = _unflatten(v3.gather(2, index.unsqueeze(1).expand(-1, v3.shape[1], -1)), q)
    return (out, _unflatten(max_cos.unsqueeze(1), q)) if return_similarity else out


def hard_align(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    return_similarity: bool = False,
    backend: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """For each query position, ``v`` at the prompt position of highest cosine similarity to ``q``.

    Args:
        q (Tensor[B, Cqk, Hq, Wq]), k (Tensor[B, Cqk, Hp, Wp] or Tensor[B, P, Cqk, Hp, Wp]),
        v (Tensor[B, Cv, Hp, Wp] or Tensor[B, P, Cv, Hp, Wp]): as in :func:`soft_align`. Norms are clamped at
            1e-8 (as ``F.normalize``); positions of several prompts are numbered prompt-major.
        return_similarity (bool): also return the highest cosine similarity; ``1 - similarity`` is the cosine
            anomaly map of prompt-based methods.
        backend (None | "auto" | "kernel" | "reference"): overrides the global choice (see ``ad_fast.ops``).

    Returns:
        Tensor[B, Cv, Hq, Wq] of v's dtype (differentiable in v only), and with ``return_similarity``
        Tensor[B, 1, Hq, Wq] (float32; float64 for float64 inputs). Ties go to the lowest prompt position;
        positions whose best similarities differ by float rounding only may pick either.
    """
    q3, k3, v3 = _flattened(q, k, v)
    if not _kernel_runs("hard_align_match", q, backend):
        return hard_align_reference(q, k, v, return_similarity)
    max_cos, index = torch.ops.ad_fast.hard_align_match(q3.detach(), k3.detach())
    return _gathered(q, v3, max_cos, index, return_similarity)


if has_ops():

    def _lse_dtype(x: torch.Tensor) -> torch.dtype:
        return _compute_dtype(x.dtype)

    @torch.library.register_fake("ad_fast::soft_align")
    def _soft_align_fake(q, k, v, scale):
        # Also reached by a raw call mixing a meta tensor with a real one: the devices must be checked here.
        check_same_device({"q": q, "k": k, "v": v})
        torch._check(q.dim() == 3 and k.dim() == 3 and v.dim() == 3, lambda: "q, k, v must be 3-d [B, C, N]")
        torch._check(k.shape[0] == q.shape[0] and v.shape[0] == q.shape[0], lambda: "batch sizes must match")
        torch._check(k.shape[1] == q.shape[1], lambda: "k must have q's channel count")
        torch._check(v.shape[2] == k.shape[2], lambda: "v must have k's prompt positions")
        out = q.new_empty((q.shape[0], v.shape[1], q.shape[2]))
        return out, q.new_empty((q.shape[0], q.shape[2]), dtype=_lse_dtype(q))

    @torch.library.register_fake("ad_fast::_soft_align_backward")
    def _soft_align_backward_fake(grad_out, q, k, v, lse, delta, scale, compute_dv):
        check_same_device({"q": q, "grad_out": grad_out, "k": k, "v": v, "lse": lse, "delta": delta})
        grad_v = torch.empty_like(v) if compute_dv else v.new_empty((0,))
        return torch.empty_like(q), torch.empty_like(k), grad_v

    @torch.library.register_fake("ad_fast::hard_align_match")
    def _hard_align_match_fake(q, k):
        check_same_device({"q": q, "k": k})
        torch._check(q.dim() == 3 and k.dim() == 3 and k.shape[:2] == q.shape[:2], lambda: "q, k: [B, C, N]")
        shape = (q.shape[0], q.shape[2])
        return q.new_empty(shape, dtype=_lse_dtype(q)), q.new_empty(shape, dtype=torch.int64)

    def _soft_align_setup_context(ctx, inputs, output):
        q, k, v, scale = inputs
        out, lse = output
        ctx.scale = scale
        ctx.save_for_backward(q, k, v, out, lse)

    def _soft_align_backward(ctx, grad_out, grad_lse):
        q, k, v, out, lse = ctx.saved_tensors
        if grad_out is None:
            grad_out = torch.zeros_like(out)
        # D_i = rowsum(dO * O); a gradient on lse adds P * grad_lse to dS, i.e. subtracts it from D.
        delta = (grad_out.to(lse.dtype) * out.to(lse.dtype)).sum(1)
        if grad_lse is not None:
            delta = delta - grad_lse
        grad_q, grad_k, grad_v = torch.ops.ad_fast._soft_align_backward(
            grad_out, q, k, v, lse, delta, ctx.scale, ctx.needs_input_grad[2]
        )
        return (
            grad_q if ctx.needs_input_grad[0] else None,
            grad_k if ctx.needs_input_grad[1] else None,
            grad_v if ctx.needs_input_grad[2] else None,
            None,
        )

    torch.library.register_autograd(
        "ad_fast::soft_align", _soft_align_backward, setup_context=_soft_align_setup_context
    )
