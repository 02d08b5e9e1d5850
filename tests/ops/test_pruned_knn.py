"""ad_fast.ops.pruned_knn (exact nearest row with projection pruning) against a float64 brute-force oracle.

The kernel scores every candidate it keeps in float64, so its answer is the float64 nearest row of the values as
stored: the oracle's distance of the returned row must equal the oracle's minimum to float64 rounding (1e-12
relative), the returned distance must be that minimum rounded to float32 (1e-6 relative), and exact duplicates
must give the lower index.
"""

from __future__ import annotations

import pytest
import torch

from ad_fast._extension import has_ops
from ad_fast.ops import MemoryBank, knn
from ad_fast.ops.pruned_knn import MIN_ROWS, PRUNE_DIMS, build_projection_index, knn_pruned, pruning_pays

pytestmark = pytest.mark.skipif(not has_ops(), reason="ad_fast._C not built")


def clustered(n: int, dim: int, generator: torch.Generator, rank: int = 8, offset: float = 0.0) -> torch.Tensor:
    """Rows near a low-rank subspace (like patch features: most energy in a few directions) plus a common offset."""
    basis = torch.randn(rank, dim, generator=generator)
    return torch.randn(n, rank, generator=generator) @ basis + 0.2 * torch.randn(n, dim, generator=generator) + offset


def check_exact(query: torch.Tensor, bank: torch.Tensor, dist: torch.Tensor, idx: torch.Tensor, metric: str) -> None:
    q, b = query.double().reshape(-1, query.shape[-1]), bank.double()
    d2 = torch.cdist(q, b).pow(2) if q.shape[0] else torch.empty(0, b.shape[0], dtype=torch.float64)
    best = d2.min(1).values
    got = d2.gather(1, idx.reshape(-1, 1))[:, 0]
    scale = q.pow(2).sum(1) + b.pow(2).sum(1).max()
    assert bool((got <= best + 1e-12 * scale).all()), "a row farther than the nearest was returned"
    expected = best if metric == "sqeuclidean" else best.sqrt()
    atol = 1e-6 * float(scale.max()) ** 0.5 if scale.numel() else 0.0
    torch.testing.assert_close(dist.reshape(-1).double(), expected, rtol=1e-6, atol=atol)


@pytest.mark.parametrize("metric", ["l2", "sqeuclidean"])
@pytest.mark.parametrize("n, dim, dims, m", [(1, 1, 1, 1), (7, 3, 2, 5), (33, 40, 5, 17), (1031, 130, 16, 64),
                                             (500, 300, 300, 0)])
def test_matches_the_float64_nearest_row(metric, n, dim, dims, m):
    generator = torch.Generator().manual_seed(n * 7 + dim)
    bank = clustered(n, dim, generator, rank=min(8, dim))
    query = clustered(m, dim, generator, rank=min(8, dim))
    index = build_projection_index(bank, dims)
    dist, idx = knn_pruned(query, bank, index, metric)
    assert dist.shape == idx.shape == (m, 1) and dist.dtype == torch.float32 and idx.dtype == torch.int64
    check_exact(query, bank, dist, idx, metric)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_storage_dtypes_and_a_large_common_offset(dtype):
    generator = torch.Generator().manual_seed(1)
    bank = clustered(600, 96, generator, offset=50.0).to(dtype)
    query = clustered(40, 96, generator, offset=50.0)
    dist, idx = knn_pruned(query, bank, build_projection_index(bank, 8))
    check_exact(query, bank, dist, idx, "l2")
    torch.testing.assert_close(idx, knn(query, bank, 1)[1])


def test_exact_duplicates_give_the_lower_index_and_any_axes_stay_exact():
    generator = torch.Generator().manual_seed(2)
    bank = clustered(300, 64, generator)
    bank = torch.cat([bank, bank[:50], bank[100:150]])  # rows 300.. duplicate 0..49, 350.. duplicate 100..149
    query = torch.cat([bank[:50], bank[100:150] + 1e-3])
    dist, idx = knn_pruned(query, bank, build_projection_index(bank, 6))
    check_exact(query, bank, dist, idx, "l2")
    assert idx[:50, 0].tolist() == list(range(50)) and idx[50:, 0].tolist() == list(range(100, 150))
    # axes that say nothing about the rows (random orthonormal directions) prune less but stay exact
    index = build_projection_index(bank, 6)
    axes = torch.linalg.qr(torch.randn(64, 6, generator=generator, dtype=torch.float64))[0].T.float().contiguous()
    prefix = ((bank.double() - index.centre.double()) @ axes.double().T).float()
    dist2, idx2 = knn_pruned(query, bank, index._replace(axes=axes, prefix=prefix))
    assert torch.equal(idx2, idx) and torch.equal(dist2, dist)


def test_non_contiguous_and_batched_queries():
    generator = torch.Generator().manual_seed(3)
    bank = clustered(200, 48, generator)
    query = clustered(96, 48, generator).reshape(2, 48, 48).transpose(1, 2)  # [2, 48, 48], non-contiguous
    dist, idx = knn_pruned(query, bank, build_projection_index(bank, 8))
    assert dist.shape == (2, 48, 1)
    check_exact(query.reshape(-1, 48), bank, dist, idx, "l2")


def test_bad_inputs_raise_errors_naming_the_argument():
    generator = torch.Generator().manual_seed(4)
    bank = clustered(20, 8, generator)
    index = build_projection_index(bank, 3)
    query = clustered(4, 8, generator)
    with pytest.raises(ValueError, match="query"):
        knn_pruned(query.clone().index_fill_(0, torch.tensor([1]), float("nan")), bank, index)
    with pytest.raises(TypeError, match="query"):
        knn_pruned(query.double(), bank, index)
    with pytest.raises(ValueError, match="metric"):
        knn_pruned(query, bank, index, "cosine")
    with pytest.raises(ValueError, match="query and bank"):
        knn_pruned(query[:, :5], bank, index)
    with pytest.raises(ValueError, match="bank_prefix"):
        knn_pruned(query, bank[:10], index)
    with pytest.raises(ValueError, match="rows"):
        build_projection_index(bank[:0])


def test_memory_bank_prunes_large_wide_banks_and_rebuilds_after_an_in_place_change():
    generator = torch.Generator().manual_seed(5)
    bank = MemoryBank(3 * PRUNE_DIMS).add(clustered(MIN_ROWS + 3, 3 * PRUNE_DIMS, generator))
    query = clustered(50, 3 * PRUNE_DIMS, generator)
    assert pruning_pays(bank.rows, 1, "l2", query) and not pruning_pays(bank.rows, 2, "l2", query)
    assert not pruning_pays(bank.rows[:MIN_ROWS - 1], 1, "l2", query)
    for _ in range(2):
        dist, idx = bank.search(query)
        check_exact(query, bank.rows, dist, idx, "l2")
        bank.rows[idx[:10, 0]] += 5.0  # in place: the cached projection must not be used for the new rows
    for _ in range(2):  # replaced by new tensors of the same shape (the old one freed): rebuilt each time
        bank.rows = clustered(MIN_ROWS + 3, 3 * PRUNE_DIMS, generator)
        dist, idx = bank.search(query)
        check_exact(query, bank.rows, dist, idx, "l2")


def small_case(seed: int, rows: int, dim: int, dims: int, queries: int):
    """(bank [rows, dim], its projection index on ``dims`` axes, query [queries, dim]), clustered rows."""
    generator = torch.Generator().manual_seed(seed)
    bank = clustered(rows, dim, generator)
    return bank, build_projection_index(bank, dims), clustered(queries, dim, generator)


def test_reference_backend_gives_the_kernels_answer():
    bank, index, query = small_case(7, rows=300, dim=40, dims=6, queries=25)
    for metric in ("l2", "sqeuclidean"):
        dist, idx = knn_pruned(query, bank, index, metric, backend="reference")
        expected_dist, expected_idx = knn_pruned(query, bank, index, metric, backend="kernel")
        assert torch.equal(idx, expected_idx)
        torch.testing.assert_close(dist, expected_dist, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="metric"):
        knn_pruned(query, bank, index, "cosine", backend="reference")


def test_opcheck():
    bank, index, query = small_case(6, rows=40, dim=12, dims=4, queries=9)
    for metric in ("l2", "sqeuclidean"):
        torch.library.opcheck(torch.ops.ad_fast.knn_pruned.default, (query, bank, *index, metric))
