"""kNN: ad_fast kernel vs the chunked-matmul reference, chunked torch.cdist + topk and faiss-cpu IndexFlatL2.

Full size (the issue's): M=4096 queries, N=100k bank rows, D=1536, k in {1, 9}; ``AD_FAST_BENCH_KNN_N`` sets N
(the full size takes minutes per implementation on a shared 2-core machine), ``AD_FAST_BENCH_FAST=1`` shrinks all.
    pytest benchmarks/bench_knn.py --benchmark-only --benchmark-group-by=group --benchmark-columns=min,mean,rounds
On CUDA the kernel and the reference both run on the device, and a bank of ``AD_FAST_BENCH_KNN_LARGE_N`` rows
(default 2M, the issue's largest size; 12 GiB in float32) is searched too.
Extra info per case: peak extra memory (MiB) and, for low-precision banks, recall@9 against the float32 bank.
"""

from __future__ import annotations

import os

import pytest
import torch

from ad_fast.ops import knn
from ad_fast.ops.knn import knn_reference
from bench_utils import peak_extra_mib, pick, synchronized

M, N, D = pick((4096, int(os.environ.get("AD_FAST_BENCH_KNN_N", 100_000)), 1536), (256, 5000, 128))
LARGE_N = pick(int(os.environ.get("AD_FAST_BENCH_KNN_LARGE_N", 2_000_000)), 20_000)
ROUNDS = pick(1, 1)
CDIST_CHUNK = 1024
_NO_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture(scope="module")
def data():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(M, D, generator=gen), torch.randn(N, D, generator=gen)


def cdist_topk(query: torch.Tensor, bank: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    dists, ids = [], []
    for start in range(0, query.shape[0], CDIST_CHUNK):
        d, i = torch.cdist(query[start : start + CDIST_CHUNK], bank).topk(k, dim=1, largest=False)
        dists.append(d)
        ids.append(i)
    return torch.cat(dists), torch.cat(ids)


def run(benchmark, fn, device: str = "cpu", n_bank: int = N):
    fn = synchronized(fn, device)
    benchmark.extra_info["peak_extra_MiB"] = round(peak_extra_mib(fn, device), 1)
    benchmark.extra_info["shape"] = f"M={M} N={n_bank} D={D}"
    return benchmark.pedantic(fn, rounds=ROUNDS, iterations=1, warmup_rounds=0)


@pytest.mark.parametrize("k", [1, 9])
@pytest.mark.parametrize(
    "impl",
    ["ad_fast", "reference", "cdist_topk", "faiss_flat_l2"]
    + [pytest.param(name, marks=_NO_CUDA) for name in ("ad_fast_cuda", "reference_cuda")],
)
def test_knn_l2(benchmark, data, impl, k):
    benchmark.group = f"knn-l2-k{k}"
    query, bank = data
    device = "cuda" if impl.endswith("cuda") else "cpu"
    if device == "cuda":
        query, bank = query.cuda(), bank.cuda()
    if impl.startswith("ad_fast"):
        fn = lambda: knn(query, bank, k, "l2", backend="kernel")  # noqa: E731
    elif impl.startswith("reference"):
        fn = lambda: knn_reference(query, bank, k, "l2")  # noqa: E731
    elif impl == "cdist_topk":
        fn = lambda: cdist_topk(query, bank, k)  # noqa: E731
    else:
        faiss = pytest.importorskip("faiss")
        faiss.omp_set_num_threads(torch.get_num_threads())
        index = faiss.IndexFlatL2(D)
        index.add(bank.numpy())
        q = query.numpy()
        fn = lambda: index.search(q, k)  # noqa: E731
    run(benchmark, fn, device)


@pytest.mark.parametrize("storage", [torch.float16, torch.bfloat16])
def test_knn_low_precision_bank(benchmark, data, storage):
    """Half the bank's memory; recall@9 against the float32 bank's exact neighbours is recorded."""
    benchmark.group = "knn-l2-k9"
    query, bank = data
    low = bank.to(storage)
    result = run(benchmark, lambda: knn(query, low, 9, "l2", backend="kernel"))
    exact = knn(query, bank, 9, "l2", backend="kernel")[1]
    hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(result[1], exact))
    benchmark.extra_info["recall_at_9_vs_float32"] = round(hits / exact.numel(), 5)
    benchmark.extra_info["bank_MiB"] = low.numel() * low.element_size() / 2**20


@_NO_CUDA
@pytest.mark.parametrize("impl", ["ad_fast_cuda", "reference_cuda"])
def test_knn_l2_large_bank_cuda(benchmark, impl):
    """The issue's largest bank (N=2M by default), generated on the device; k=9."""
    benchmark.group = f"knn-l2-k9-N{LARGE_N}"
    gen = torch.Generator("cuda").manual_seed(0)
    query = torch.randn(M, D, generator=gen, device="cuda")
    bank = torch.randn(LARGE_N, D, generator=gen, device="cuda")
    if impl == "ad_fast_cuda":
        fn = lambda: knn(query, bank, 9, "l2", backend="kernel")  # noqa: E731
    else:
        fn = lambda: knn_reference(query, bank, 9, "l2")  # noqa: E731
    run(benchmark, fn, "cuda", LARGE_N)
