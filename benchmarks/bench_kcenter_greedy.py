"""Greedy k-center coreset: ad_fast's fused pass per pick vs the per-iteration PyTorch reference loop.

Full size (the issue's): N=200k rows, D=1536 projected to 128, 1% and 10% picks. The reference loop is timed over
REF_PICKS picks and its per-pick time recorded, since 20k picks of it take many minutes; the kernel runs the full
selection. ``AD_FAST_BENCH_FAST=1`` shrinks everything.
    pytest benchmarks/bench_kcenter_greedy.py --benchmark-only --benchmark-group-by=group \
        --benchmark-columns=min,mean,rounds
"""

from __future__ import annotations

import pytest
import torch

from ad_fast.ops import kcenter_greedy
from ad_fast.ops.kcenter_greedy import kcenter_greedy_reference, random_projection
from bench_utils import pick, synchronized

N, D, PROJ = pick((200_000, 1536, 128), (20_000, 64, 32))
REF_PICKS = pick(50, 10)


def record_per_pick(benchmark, picks: int) -> None:
    benchmark.extra_info["picks"] = picks
    stats = getattr(benchmark, "stats", None)  # absent under --benchmark-disable
    if stats is not None:
        benchmark.extra_info["ms_per_pick"] = round(stats.stats.min / picks * 1e3, 3)


@pytest.fixture(scope="module")
def projected():
    """The projected rows (projection itself is one GEMM, not what is measured here)."""
    gen = torch.Generator().manual_seed(0)
    rows = torch.empty(N, PROJ)
    for start in range(0, N, 20_000):  # project in chunks: the [N, D] matrix would be 1.2 GB
        chunk = torch.randn(min(20_000, N - start), D, generator=gen)
        rows[start : start + chunk.shape[0]] = chunk @ random_projection(D, PROJ, seed=0)
    return rows


@pytest.mark.parametrize("ratio", [0.01, 0.1])
def test_kcenter_kernel(benchmark, projected, ratio, device):
    benchmark.group = f"kcenter-N{N}-ratio{ratio}"
    picks = int(N * ratio)
    rows = projected.to(device)
    fn = synchronized(lambda: kcenter_greedy(rows, picks, projection_dim=None, start_index=0, backend="kernel"), device)
    result = benchmark.pedantic(fn, rounds=1, iterations=1)
    record_per_pick(benchmark, picks)
    reference = kcenter_greedy_reference(projected, REF_PICKS, projection_dim=None, start_index=0)
    assert torch.equal(result[:REF_PICKS].cpu(), reference)


def test_kcenter_reference_loop(benchmark, projected, device):
    benchmark.group = "kcenter-reference-per-pick"
    rows = projected.to(device)
    fn = synchronized(lambda: kcenter_greedy_reference(rows, REF_PICKS, projection_dim=None, start_index=0), device)
    benchmark.pedantic(fn, rounds=1, iterations=1)
    record_per_pick(benchmark, REF_PICKS)


def test_kcenter_kernel_per_pick(benchmark, projected, device):
    benchmark.group = "kcenter-reference-per-pick"
    rows = projected.to(device)
    fn = synchronized(
        lambda: kcenter_greedy(rows, REF_PICKS, projection_dim=None, start_index=0, backend="kernel"), device
    )
    benchmark.pedantic(fn, rounds=3, iterations=1)
    record_per_pick(benchmark, REF_PICKS)
