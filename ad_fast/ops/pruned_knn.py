"""Exact nearest bank row (k = 1, l2 / sqeuclidean) that scores only the rows a projection cannot rule out.

Own code because the libraries' exact searches (``torch.cdist``, faiss ``IndexFlatL2``) score every row, and their
pruned indexes (IVF, HNSW, PQ) are approximate. Here the bank's ``P`` leading principal axes (orthonormal rows
``axes [P, D]``) bound every distance from below: ``||axes (q - b)|| <= ||q - b||``. Two ``P``-wide GEMMs give
those bounds for all rows; only rows whose bound does not exceed the best exact distance found so far (plus a
proven allowance for float32 rounding) are scored in full (float64 sums, see ``csrc/knn/knn_pruned_cpu.cpp``), so
the answer is :func:`ad_fast.ops.knn`'s with ``k = 1``, ties to the lower index. On DMAD's banks (1128-d
coordinates, efficientnet_lite0) ~1 % of the rows are scored at ``P = 256``. CPU only: on CUDA and in the reference
backend :class:`~ad_fast.ops.MemoryBank` runs :func:`~ad_fast.ops.knn`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .._extension import has_ops
from ._backend import get_backend, kernel_available, use_kernel
from ._validate import check_choice, check_same_device, check_tensor
from .knn import knn

PRUNE_DIMS = 256
"""Projection width P."""
MIN_ROWS = 1024
"""Smaller banks are searched in full: the bounds cost about as much as the rows they would save."""
_CHUNK_ELEMENTS = 1 << 22


class ProjectionIndex(NamedTuple):
    """What :func:`knn_pruned` needs besides the bank: ``centre`` (float32 [D], the rows' mean), ``axes``
    (float32 [P, D], orthonormal rows up to float32 rounding) and ``prefix`` (float32 [N, P], ``(rows - centre) @
    axes.T`` computed in float64)."""

    centre: torch.Tensor
    axes: torch.Tensor
    prefix: torch.Tensor


def build_projection_index(rows: torch.Tensor, dims: int = PRUNE_DIMS) -> ProjectionIndex:
    """The ``dims`` leading principal axes of ``rows`` (Tensor[N, D], finite; float64 covariance accumulated over
    chunks of rows, ``torch.linalg.eigh``) and the rows projected on them."""
    check_tensor(rows, "rows", ndim=2, allow_empty=False)
    chunk = max(1, _CHUNK_ELEMENTS // rows.shape[1])
    centre = (sum(part.double().sum(0) for part in rows.split(chunk)) / rows.shape[0]).float()
    covariance = torch.zeros(rows.shape[1], rows.shape[1], dtype=torch.float64, device=rows.device)
    for part in rows.split(chunk):
        centred = part.double() - centre.double()
        covariance.addmm_(centred.T, centred)
    axes = torch.linalg.eigh(covariance).eigenvectors[:, -min(dims, rows.shape[1]):].flip(1).T.float().contiguous()
    prefix = torch.cat([((part.double() - centre.double()) @ axes.double().T).float() for part in rows.split(chunk)])
    return ProjectionIndex(centre, axes, prefix)


def pruning_pays(bank: torch.Tensor, k: int, metric: str, query: torch.Tensor) -> bool:
    """Whether :func:`knn_pruned` serves this search: CPU kernels in use, one neighbour by l2/sqeuclidean, a float32
    query, a bank of at least :data:`MIN_ROWS` rows at least 3 P wide."""
    return (k == 1 and metric in ("l2", "sqeuclidean") and query.dtype == torch.float32
            and bank.device.type == "cpu" and bank.shape[0] >= MIN_ROWS and bank.shape[1] >= 3 * PRUNE_DIMS
            and get_backend() != "reference" and kernel_available("knn_pruned", bank.device))


def knn_pruned(query: torch.Tensor, bank: torch.Tensor, index: ProjectionIndex, metric: str = "l2", *,
               backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`ad_fast.ops.knn` ``(query, bank, 1, metric)``, computed with the bounds of ``index``
    (:func:`build_projection_index` of ``bank``, CPU).

    Args:
        query (Tensor[M, D] or [B, M, D], float32), bank (Tensor[N, D], float32/float16/bfloat16).
        backend (None | "auto" | "kernel" | "reference"): as :func:`ad_fast.ops.knn`; the reference (also where no
            kernel exists: CUDA, or no compiled library) is :func:`ad_fast.ops.knn.knn_reference` with ``k = 1``.
    Returns:
        (float32 Tensor[..., M, 1] distances, int64 Tensor[..., M, 1] indices).
    Raises:
        ValueError: NaN/Inf in ``query``, shapes that do not match ``bank`` or ``index``, another metric.
    """
    check_tensor(query, "query", ndim=(2, 3), dtypes=(torch.float32,), allow_empty=True)
    if not use_kernel("knn_pruned", query.device, backend):
        check_choice(metric, "metric", ("l2", "sqeuclidean"))
        return knn(query, bank, 1, metric, backend="reference")
    flat = query.detach().reshape(-1, query.shape[-1])
    dist, idx = torch.ops.ad_fast.knn_pruned(flat, bank.detach(), index.centre, index.axes, index.prefix, metric)
    shape = (*query.shape[:-1], 1)
    return dist.reshape(shape), idx.reshape(shape)


if has_ops() and hasattr(torch.ops.ad_fast, "knn_pruned"):

    @torch.library.register_fake("ad_fast::knn_pruned")
    def _knn_pruned_fake(query, bank, centre, axes, bank_prefix, metric):
        check_same_device({"query": query, "bank": bank, "centre": centre, "axes": axes, "bank_prefix": bank_prefix})
        torch._check(query.dim() == 2 and bank.dim() == 2, lambda: "query and bank must be 2-d")
        torch._check(query.shape[1] == bank.shape[1], lambda: "query and bank must have the same feature dim")
        torch._check(bank.shape[0] >= 1, lambda: "bank must have at least one row")
        torch._check(metric in ("l2", "sqeuclidean"), lambda: "metric must be l2 or sqeuclidean")
        m = query.shape[0]
        return query.new_empty(m, 1), query.new_empty(m, 1, dtype=torch.long)


__all__ = ["MIN_ROWS", "PRUNE_DIMS", "ProjectionIndex", "build_projection_index", "knn_pruned", "pruning_pays"]
