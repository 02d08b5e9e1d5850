"""Exact k-nearest-neighbour search of query rows against a memory bank, in bounded memory."""

from __future__ import annotations

import torch

from .._extension import has_ops
from ._backend import use_kernel
from ._validate import FLOAT_DTYPES, check_choice, check_same_device, check_tensor

METRICS = ("l2", "sqeuclidean", "cosine", "ip")
BANK_STORAGE_DTYPES = (torch.float16, torch.bfloat16)
NORM_EPS = 1e-12  # cosine: rows are divided by max(||row||, NORM_EPS), so a zero row has cosine 0 to everything

# Reference tiling: at most _QUERY_CHUNK x _BANK_TILE distances exist at once (64 MiB in float32).
_QUERY_CHUNK = 1024
_BANK_TILE = 16384


def _validated(
    query: torch.Tensor, bank: torch.Tensor, k: int, metric: str, bank_sq_norms: torch.Tensor | None
) -> None:
    """Check every argument of :func:`knn`; raise TypeError/ValueError naming the culprit."""
    check_tensor(query, "query", ndim=(2, 3), dtypes=FLOAT_DTYPES, allow_empty=True)
    check_tensor(bank, "bank", ndim=2, dtypes=FLOAT_DTYPES, allow_empty=True)
    check_same_device({"query": query, "bank": bank})
    if bank.dtype != query.dtype and bank.dtype not in BANK_STORAGE_DTYPES:
        raise TypeError(
            f"bank: expected dtype {query.dtype} like query (or float16/bfloat16 storage), got {bank.dtype}"
        )
    if query.shape[-1] != bank.shape[1]:
        raise ValueError(
            f"bank: expected {query.shape[-1]} columns like query's last dim, got shape {tuple(bank.shape)}"
        )
    if query.shape[-1] == 0:
        raise ValueError(f"query: expected a non-empty feature dim, got shape {tuple(query.shape)}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k: expected a positive int, got {k!r}")
    if k > bank.shape[0]:
        raise ValueError(f"k: expected at most the bank's {bank.shape[0]} rows, got {k}")
    check_choice(metric, "metric", METRICS)
    if bank_sq_norms is not None:
        check_tensor(bank_sq_norms, "bank_sq_norms", ndim=1, dtypes=(torch.float32,), allow_empty=True)
        check_same_device({"bank": bank, "bank_sq_norms": bank_sq_norms})
        if bank_sq_norms.shape[0] != bank.shape[0]:
            raise ValueError(f"bank_sq_norms: expected {bank.shape[0]} values, got {bank_sq_norms.shape[0]}")


def _check_finite(query: torch.Tensor, bank: torch.Tensor) -> None:
    for name, t in (("query", query), ("bank", bank)):
        check_tensor(t, name, dtypes=None, allow_empty=True, finite=True)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _finish(key: torch.Tensor, q_sq: torch.Tensor, q_norm: torch.Tensor, metric: str) -> torch.Tensor:
    """Turn the ranking keys of :func:`knn_reference` into distances."""
    if metric == "ip":
        return -key
    if metric == "cosine":
        return 1.0 + key / q_norm
    d2 = (key + q_sq).clamp_min(0)
    return d2.sqrt() if metric == "l2" else d2


def knn_reference(
    query: torch.Tensor,
    bank: torch.Tensor,
    k: int,
    metric: str = "l2",
    *,
    bank_sq_norms: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked-matmul + ``torch.topk`` version of :func:`knn` (same arguments and results).

    Among exactly equal distances at the k-th place the kept index follows ``torch.topk``; the kept
    results are then ordered by (distance, index). l2/sqeuclidean rank ``q - c`` against ``b - c`` (``c`` the
    first query row; the same distances), so a large offset shared by query and bank costs no precision.
    """
    _validated(query, bank, k, metric, bank_sq_norms)
    query, bank = query.detach(), bank.detach()
    _check_finite(query, bank)
    out_dtype = query.dtype
    dtype = _compute_dtype(query.dtype)
    q_all = query.reshape(-1, query.shape[-1])
    centred = metric in ("l2", "sqeuclidean")
    centre = q_all[0].to(dtype) if centred and q_all.shape[0] else None
    if metric == "cosine":
        bank_sq = (bank.to(dtype) ** 2).sum(1) if bank_sq_norms is None else bank_sq_norms.to(dtype)
        inv_bank_norm = 1.0 / bank_sq.sqrt().clamp_min(NORM_EPS)
    dists, indices = [], []
    for start in range(0, q_all.shape[0], _QUERY_CHUNK):
        q = q_all[start : start + _QUERY_CHUNK].to(dtype)
        q_sq = (q * q).sum(1, keepdim=True)
        q_norm = q_sq.sqrt().clamp_min(NORM_EPS)
        if centred:
            q = q - centre
            q_sq = (q * q).sum(1, keepdim=True)
        best_key = q.new_empty(q.shape[0], 0)
        best_idx = torch.empty(q.shape[0], 0, dtype=torch.long, device=q.device)
        for t0 in range(0, bank.shape[0], _BANK_TILE):
            tile = bank[t0 : t0 + _BANK_TILE].to(dtype)
            if centred:
                tile = tile - centre
            dot = q @ tile.T
            if metric == "ip":
                key = -dot
            elif metric == "cosine":
                key = -dot * inv_bank_norm[t0 : t0 + _BANK_TILE]
            else:
                key = (tile * tile).sum(1) - 2.0 * dot
            tile_key, tile_idx = torch.topk(key, min(k, key.shape[1]), dim=1, largest=False, sorted=False)
            best_key = torch.cat([best_key, tile_key], 1)
            best_idx = torch.cat([best_idx, tile_idx + t0], 1)
            best_key, pos = torch.topk(best_key, min(k, best_key.shape[1]), dim=1, largest=False, sorted=False)
            best_idx = best_idx.gather(1, pos)
        best_idx, order = best_idx.sort(1)  # (distance, index) order: stable sort by key after sorting by index
        best_key = best_key.gather(1, order)
        best_key, order = best_key.sort(dim=1, stable=True)
        best_idx = best_idx.gather(1, order)
        dists.append(_finish(best_key, q_sq, q_norm, metric).to(out_dtype))
        indices.append(best_idx)
    out_shape = (*query.shape[:-1], k)
    if not dists:
        return query.new_empty(out_shape), torch.empty(out_shape, dtype=torch.long, device=query.device)
    return torch.cat(dists).reshape(out_shape), torch.cat(indices).reshape(out_shape)


def knn(
    query: torch.Tensor,
    bank: torch.Tensor,
    k: int,
    metric: str = "l2",
    *,
    bank_sq_norms: torch.Tensor | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k nearest bank rows of every query row.

    Distances: ``"l2"`` ``||q - b||``, ``"sqeuclidean"`` ``||q - b||^2`` (both clamped at 0), ``"cosine"``
    ``1 - <q, b> / (max(||q||, 1e-12) max(||b||, 1e-12))``, ``"ip"`` ``<q, b>`` (a similarity: largest first).
    Results are sorted ascending (descending for ``"ip"``), ties broken by the lower bank index.

    Memory: never the full ``M x N`` matrix, whatever N; the CPU kernel reads a contiguous bank in place, never
    copying it whole (a memory-mapped bank, ``MemoryBank.load(..., mmap=True)``, stays in its map). It holds per
    thread one 256 x 512 tile of products (512 KiB in float32; plus a 512 x D float32 tile for a float16/bfloat16
    bank) and, per query and bank split (splits = 1 unless there are fewer query blocks than ~2 x threads),
    ``k + 8`` candidates (12 B each). The CUDA kernel keeps the same candidate lists (splits <= 64, chosen to
    fill the GPU) plus ``2 N`` floats of per-row coefficients. The ``k + 8`` best candidates of the tiled pass
    are re-scored exactly (float64 accumulation), so distances carry float32 rounding only, not the
    ``||q||^2 + ||b||^2 - 2 q.b`` cancellation, and exact duplicates keep the lower index.

    Exactness under a large common offset: on CPU (kernel and reference) l2/sqeuclidean rank ``q - c`` against
    ``b - c``, ``c`` the first query row (distances are unchanged; rows near it subtract exactly, integer data stay
    exact), so features sharing an offset far larger than their spread keep every digit of their distances. The CUDA kernel ranks the untranslated keys ``||b||^2 - 2 q.b``,
    whose float32 rounding is up to about ``(D + 2) 2^-24 (||b||^2 + 2 ||q|| ||b||)``: a neighbour whose squared
    distance is within that of the k-th best may be missed there.

    Args:
        query (Tensor[M, D] or Tensor[B, M, D]): query rows, any float dtype (float16/bfloat16 computed in
            float32 on CPU; float64 on CUDA runs the reference).
        bank (Tensor[N, D]): bank rows, the query's dtype or float16/bfloat16 storage (products accumulated in
            float32; on CUDA the query is cast to the bank's dtype).
        k (int): neighbours per query, ``1 <= k <= N``.
        metric ("l2" | "sqeuclidean" | "cosine" | "ip"): see above.
        bank_sq_norms (Tensor[N] float32, optional): precomputed ``||b||^2`` (see :class:`MemoryBank`), used by the
            cosine metric and the CUDA kernel (the CPU l2 path takes the norms of the translated rows).
        backend (None | "auto" | "kernel" | "reference"): overrides the global choice (see ``ad_fast.ops``).

    Returns:
        (distances, indices): Tensor[..., M, k] in the query's dtype, and int64 Tensor[..., M, k].

    Raises:
        ValueError: ``k > N``, NaN/Inf in ``query`` or ``bank``, mismatched shapes, unknown metric.
        TypeError: non-floating or mismatched dtypes.
    """
    _validated(query, bank, k, metric, bank_sq_norms)
    query, bank = query.detach(), bank.detach()  # not differentiable; the kernel's out= GEMM refuses grad tensors
    if not use_kernel("knn", query.device, backend):
        return knn_reference(query, bank, k, metric, bank_sq_norms=bank_sq_norms)
    flat = query.reshape(-1, query.shape[-1])
    if flat.device.type == "cpu":
        if flat.dtype in BANK_STORAGE_DTYPES:  # the CPU kernel computes in float32
            flat = flat.to(torch.float32)
    elif torch.float64 in (flat.dtype, bank.dtype):  # no float64 CUDA kernel: exact float64 reference instead
        return knn_reference(query, bank, k, metric, bank_sq_norms=bank_sq_norms)
    elif bank.dtype != flat.dtype:  # the CUDA kernel reads both in the bank's (storage) dtype
        flat = flat.to(bank.dtype)
    dist, idx = torch.ops.ad_fast.knn(flat, bank, k, metric, bank_sq_norms)
    out_shape = (*query.shape[:-1], k)
    return dist.to(query.dtype).reshape(out_shape), idx.reshape(out_shape)


if has_ops() and hasattr(torch.ops.ad_fast, "knn"):

    @torch.library.register_fake("ad_fast::knn")
    def _knn_fake(query, bank, k, metric, bank_sq_norms):
        # Also reached by a raw call mixing a meta tensor with a real one: the devices must be checked here.
        devices = {"query": query, "bank": bank}
        if bank_sq_norms is not None:
            devices["bank_sq_norms"] = bank_sq_norms
        check_same_device(devices)
        torch._check(query.dim() == 2 and bank.dim() == 2, lambda: "query and bank must be 2-d")
        torch._check(query.shape[1] == bank.shape[1], lambda: "query and bank must have the same feature dim")
        torch._check(1 <= k <= bank.shape[0], lambda: "k must be in [1, N]")
        m = query.shape[0]
        return query.new_empty(m, k), query.new_empty(m, k, dtype=torch.long)
