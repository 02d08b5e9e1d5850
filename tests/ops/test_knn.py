"""ad_fast.ops.knn / MemoryBank against a float64 brute-force oracle (full distance matrix + stable argsort)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ad_fast._extension import has_cuda_ops, has_ops
from ad_fast.ops import MemoryBank, knn

METRICS = ["l2", "sqeuclidean", "cosine", "ip"]
BACKENDS = ["reference", pytest.param("kernel", marks=pytest.mark.skipif(not has_ops(), reason="ad_fast._C not built"))]
# float32 distances vs the float64 oracle: relative to the scale of the data (||q||^2 + ||b||^2 for l2).
RTOL, ATOL = 1e-5, 1e-5


def all_distances(query: torch.Tensor, bank: torch.Tensor, metric: str) -> torch.Tensor:
    """float64 [M, N] distances (similarities for "ip") of every query row to every bank row."""
    q = query.double().reshape(-1, query.shape[-1])
    b = bank.double()
    if metric in ("l2", "sqeuclidean"):
        d2 = (q[:, None, :] - b[None, :, :]).pow(2).sum(-1) if q.shape[1] <= 64 else torch.cdist(q, b).pow(2)
        return d2.sqrt() if metric == "l2" else d2
    if metric == "cosine":
        return 1.0 - F.normalize(q, dim=1, eps=1e-12) @ F.normalize(b, dim=1, eps=1e-12).T
    return q @ b.T


def oracle(query: torch.Tensor, bank: torch.Tensor, k: int, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 brute force: all distances, stable sort (ties to the lower index), first k."""
    dist = all_distances(query, bank, metric)
    values, order = dist.sort(dim=1, stable=True, descending=metric == "ip")
    return values[:, :k], order[:, :k]


def tolerance(query: torch.Tensor, bank: torch.Tensor, metric: str, rel: float = 1e-5) -> float:
    """Absolute error allowed on a distance: ``rel`` times the scale of its terms (``||q||^2 + ||b||^2``)."""
    if metric == "cosine":
        return rel
    scale = max(float(query.double().pow(2).sum(-1).max() + bank.double().pow(2).sum(-1).max()), 1.0)
    return rel * scale if metric in ("sqeuclidean", "ip") else rel * scale**0.5


def assert_same_ids_per_tie_group(ids: torch.Tensor, ids_ref: torch.Tensor, dist_ref: torch.Tensor, tol: float) -> None:
    """Ids may differ only among oracle distances within ``tol``; the group cut by k is skipped (faiss habit)."""
    start = 0
    k = dist_ref.shape[0]
    while start < k:
        end = start + 1
        while end < k and abs(float(dist_ref[end] - dist_ref[end - 1])) <= tol:
            end += 1
        if end < k:
            assert set(ids[start:end].tolist()) == set(ids_ref[start:end].tolist()), (ids, ids_ref, dist_ref)
        start = end


def check_against_oracle(query, bank, k, metric, backend, rel=1e-5):
    dist, idx = knn(query, bank, k, metric, backend=backend)
    dist_ref, idx_ref = oracle(query, bank, k, metric)
    tol = tolerance(query, bank, metric, rel)
    assert dist.shape == idx.shape == (*query.shape[:-1], k)
    assert idx.dtype == torch.long and dist.dtype == query.dtype
    dist, idx = dist.reshape(-1, k).cpu().double(), idx.reshape(-1, k).cpu()
    torch.testing.assert_close(dist, dist_ref, rtol=rel, atol=tol)
    for r in range(dist_ref.shape[0]):
        assert_same_ids_per_tie_group(idx[r], idx_ref[r], dist_ref[r], tol)
    # every returned id is a real neighbour: its own oracle distance is the returned one
    own = all_distances(query, bank, metric).gather(1, idx)
    torch.testing.assert_close(dist, own, rtol=rel, atol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize(
    "m, n, d, k",
    [
        (1, 1, 1, 1),  # N = 1
        (5, 7, 1, 7),  # D = 1, k = N
        (37, 301, 19, 5),
        (300, 1100, 33, 9),  # crosses the kernel's 256-query block and 512-row bank tile
        (65, 700, 1537, 3),  # D = 1537
        (3, 4500, 8, 64),  # few queries: the bank is split across threads; k = 64
    ],
)
def test_matches_oracle(m, n, d, k, metric, backend):
    gen = torch.Generator().manual_seed(m * 1000 + n + d)
    query = torch.randn(m, d, generator=gen)
    bank = torch.randn(n, d, generator=gen)
    check_against_oracle(query, bank, k, metric, backend)


@pytest.mark.parametrize("metric", ["l2", "sqeuclidean", "ip"])
def test_kernel_breaks_exact_ties_by_lower_index(metric):
    """Small integers make every product exact, so ids must equal the oracle's stable order exactly."""
    if not has_ops():
        pytest.skip("ad_fast._C not built")
    gen = torch.Generator().manual_seed(3)
    query = torch.randint(-2, 3, (200, 5), generator=gen).float()
    bank = torch.randint(-2, 3, (900, 5), generator=gen).float()
    dist, idx = knn(query, bank, 12, metric, backend="kernel")
    dist_ref, idx_ref = oracle(query, bank, 12, metric)
    assert torch.equal(idx, idx_ref)
    assert torch.equal(dist, dist_ref.float())


@pytest.mark.parametrize("backend", BACKENDS)
def test_duplicate_rows(backend):
    gen = torch.Generator().manual_seed(4)
    base = torch.randn(50, 24, generator=gen)
    bank = torch.cat([base, base, base])  # row i == row i + 50 == row i + 100
    query = base[:10] + 1e-3 * torch.randn(10, 24, generator=gen)
    dist, idx = knn(query, bank, 3, "l2", backend=backend)
    expected = torch.arange(10)[:, None] + torch.tensor([0, 50, 100])
    assert torch.equal(idx.sort(1).values, expected)
    torch.testing.assert_close(dist[:, 0], dist[:, 2], rtol=1e-6, atol=1e-6)
    if backend == "kernel":  # exact re-scoring: the copies tie bit for bit, so the cut keeps the lower ids
        assert torch.equal(idx, expected)
        _, idx2 = knn(query, bank, 2, "l2", backend=backend)
        assert torch.equal(idx2, expected[:, :2])


@pytest.mark.parametrize(
    "metric, storage", [("l2", torch.float32), ("sqeuclidean", torch.float32), ("cosine", torch.float16)]
)
def test_kernel_bank_over_several_chunks(metric, storage):
    """A 4200 x 4096 bank converted to float32 (67 MiB, over the CPU kernel's 64 MiB of converted rows; each chunk is
    also at most a quarter of the bank) is scanned in several chunks: candidates carry over, ids are global, and a
    duplicate row in a later chunk ties bit for bit and keeps the lower id."""
    if not has_ops():
        pytest.skip("ad_fast._C not built")
    gen = torch.Generator().manual_seed(10)
    bank = torch.randn(4200, 4096, generator=gen).to(storage)
    bank[4100] = bank[10]  # second chunk duplicates a first-chunk row
    bank[4150] = bank[4000]
    query = torch.randn(40, 4096, generator=gen)
    query[:4] = bank[[10, 4000, 4100, 4199]].float() + 1e-2 * torch.randn(4, 4096, generator=gen)
    check_against_oracle(query, bank, 3, metric, "kernel")
    dist, idx = knn(query, bank, 2, metric, backend="kernel")
    assert idx[0].tolist() == [10, 4100] and idx[1].tolist() == [4000, 4150] and idx[2].tolist() == [10, 4100]
    assert torch.equal(dist[:3, 0], dist[:3, 1])
    assert idx[3, 0] == 4199
    dist_ref, idx_ref = knn(query, bank, 2, metric, backend="reference")
    assert torch.equal(idx[3:, 0], idx_ref[3:, 0])  # rows 0..2 tie exactly; the reference may order them either way
    # rows 0..3 sit 1e-2 from a bank row, where the reference's float32 expansion cancels; the oracle check covers them
    tol = tolerance(query, bank, metric)
    torch.testing.assert_close(dist[4:].double(), dist_ref[4:].double(), rtol=1e-5, atol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batched_equals_unbatched_and_noncontiguous(backend):
    gen = torch.Generator().manual_seed(5)
    query = torch.randn(3, 41, 17, generator=gen)
    bank_t = torch.randn(17, 260, generator=gen)  # transposed storage: bank_t.T is non-contiguous
    bank = bank_t.T
    assert not bank.is_contiguous()
    dist, idx = knn(query, bank, 4, "l2", backend=backend)
    for b in range(3):
        d_b, i_b = knn(query[b].T.contiguous().T, bank.contiguous(), 4, "l2", backend=backend)
        torch.testing.assert_close(dist[b], d_b)
        assert torch.equal(idx[b], i_b)
    check_against_oracle(query, bank, 4, "l2", backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_and_empty_query(backend):
    gen = torch.Generator().manual_seed(6)
    query = torch.randn(20, 9, generator=gen, dtype=torch.float64)
    bank = torch.randn(70, 9, generator=gen, dtype=torch.float64)
    dist, idx = knn(query, bank, 5, "sqeuclidean", backend=backend)
    dist_ref, idx_ref = oracle(query, bank, 5, "sqeuclidean")
    torch.testing.assert_close(dist, dist_ref, rtol=1e-12, atol=1e-12)
    assert torch.equal(idx, idx_ref)
    d0, i0 = knn(query[:0], bank, 5, backend=backend)
    assert d0.shape == i0.shape == (0, 5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("storage", [torch.float16, torch.bfloat16])
def test_low_precision_bank_storage(storage, backend):
    """A float16/bfloat16 bank is exact search over the rounded rows (computed in float32)."""
    gen = torch.Generator().manual_seed(7)
    query = torch.randn(50, 40, generator=gen)
    bank = torch.randn(600, 40, generator=gen).to(storage)
    dist, idx = knn(query, bank, 6, "l2", backend=backend)
    dist_ref, idx_ref = oracle(query, bank.float(), 6, "l2")
    torch.testing.assert_close(dist.double(), dist_ref, rtol=1e-5, atol=1e-4)
    for r in range(50):
        assert_same_ids_per_tie_group(idx[r], idx_ref[r], dist_ref[r], 1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("where", ["query", "bank"])
def test_nonfinite_input_raises(where, bad, backend):
    query, bank = torch.randn(30, 6), torch.randn(700, 6)
    (query if where == "query" else bank)[7, 2] = bad
    with pytest.raises(ValueError, match=where):
        knn(query, bank, 2, "l2", backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_arguments_raise(backend):
    query, bank = torch.randn(4, 6), torch.randn(5, 6)
    with pytest.raises(ValueError, match="k"):
        knn(query, bank, 6, backend=backend)  # N < k
    with pytest.raises(ValueError, match="k"):
        knn(query, bank, 0, backend=backend)
    with pytest.raises(ValueError, match="metric"):
        knn(query, bank, 1, "manhattan", backend=backend)
    with pytest.raises(ValueError, match="bank"):
        knn(query, torch.randn(5, 7), 1, backend=backend)
    with pytest.raises(ValueError, match="query"):
        knn(torch.randn(6), bank, 1, backend=backend)
    with pytest.raises(TypeError, match="query"):
        knn(query.long(), bank, 1, backend=backend)
    with pytest.raises(TypeError, match="bank"):
        knn(query, bank.double(), 1, backend=backend)
    with pytest.raises(TypeError, match="query"):
        knn(query.numpy(), bank, 1, backend=backend)


def test_kernel_is_independent_of_thread_count():
    if not has_ops():
        pytest.skip("ad_fast._C not built")
    gen = torch.Generator().manual_seed(8)
    query, bank = torch.randn(600, 30, generator=gen), torch.randn(5000, 30, generator=gen)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = knn(query, bank, 5, backend="kernel")
        torch.set_num_threads(max(2, threads))
        many = knn(query, bank, 5, backend="kernel")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[1], many[1]) and torch.equal(one[0], many[0])


def test_opcheck():
    if not has_ops():
        pytest.skip("ad_fast._C not built")
    gen = torch.Generator().manual_seed(9)
    query, bank = torch.randn(13, 7, generator=gen), torch.randn(40, 7, generator=gen)
    norms = bank.pow(2).sum(1)
    for args in [(query, bank, 3, "l2", None), (query, bank, 1, "ip", None), (query, bank, 2, "sqeuclidean", norms)]:
        torch.library.opcheck(torch.ops.ad_fast.knn.default, args)


def test_memory_bank_add_search_save_load(tmp_path):
    gen = torch.Generator().manual_seed(10)
    rows = torch.randn(300, 12, generator=gen)
    bank = MemoryBank(12).add(rows[:100]).add(rows[100:])
    assert len(bank) == 300
    torch.testing.assert_close(bank.sq_norms, rows.pow(2).sum(1))
    query = torch.randn(25, 12, generator=gen)
    dist, idx = bank.search(query, k=4)
    dist_ref, idx_ref = knn(query, rows, 4, backend="reference")
    torch.testing.assert_close(dist, dist_ref)
    assert torch.equal(idx, idx_ref)
    path = tmp_path / "bank.safetensors"
    bank.save(path)
    loaded = MemoryBank.load(path)
    assert torch.equal(loaded.rows, bank.rows) and loaded.metric == "l2"
    assert torch.equal(loaded.search(query, k=4)[1], idx)


def test_memory_bank_half_storage_and_errors(tmp_path):
    gen = torch.Generator().manual_seed(11)
    rows = torch.randn(200, 8, generator=gen)
    bank = MemoryBank(8, dtype=torch.float16, metric="cosine").add(rows)
    assert bank.rows.dtype == torch.float16 and bank.rows.element_size() * bank.rows.numel() == 200 * 8 * 2
    query = torch.randn(9, 8, generator=gen)
    dist, _ = bank.search(query, k=2)
    dist_ref, _ = oracle(query, rows.half().float(), 2, "cosine")
    torch.testing.assert_close(dist.double(), dist_ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="empty"):
        MemoryBank(8).search(query)
    with pytest.raises(ValueError, match="rows"):
        bank.add(torch.randn(3, 9))
    with pytest.raises(ValueError, match="rows"):
        bank.add(torch.full((2, 8), float("nan")))
    with pytest.raises(ValueError, match="rows"):
        bank.add(torch.full((2, 8), 1e6))  # overflows float16
    with pytest.raises(FileNotFoundError):
        MemoryBank.load(tmp_path / "missing.safetensors")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="path"):
        MemoryBank.load(corrupt)


@pytest.mark.cuda
@pytest.mark.skipif(not (torch.cuda.is_available() and has_cuda_ops()), reason="needs CUDA and the CUDA kernels")
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m, n, d, k", [(1, 1, 1, 1), (300, 1100, 33, 9), (65, 2000, 1537, 3), (3, 9000, 8, 64)])
def test_cuda_matches_oracle(m, n, d, k, dtype, metric):
    """Inputs rounded to ``dtype`` are searched exactly with float32 accumulation; distances come back in dtype."""
    gen = torch.Generator().manual_seed(12)
    query = torch.randn(m, d, generator=gen).to(dtype)
    bank = torch.randn(n, d, generator=gen).to(dtype)
    dist, idx = knn(query.cuda(), bank.cuda(), k, metric, backend="kernel")
    assert dist.dtype == dtype and idx.dtype == torch.long
    dist_ref, idx_ref = oracle(query, bank, k, metric)
    tol = tolerance(query, bank, metric, 1e-4)
    out_rel = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    torch.testing.assert_close(dist.cpu().double(), dist_ref, rtol=out_rel, atol=tol + out_rel)
    for r in range(dist_ref.shape[0]):
        assert_same_ids_per_tie_group(idx[r].cpu(), idx_ref[r], dist_ref[r], tol)
    own = all_distances(query, bank, metric).gather(1, idx.cpu())
    torch.testing.assert_close(own, dist_ref, rtol=1e-5, atol=tol)
