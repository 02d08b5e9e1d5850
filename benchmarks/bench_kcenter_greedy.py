"""Greedy k-center coreset: ad_fast's fused pass per pick vs the per-iteration PyTorch reference loop.

Full size (the issue's): N=200k rows, D=1536 projected to 128, 1% and 10% picks. The reference loop is timed over
REF_PICKS picks and its per-pick time recorded, since 20k picks of it take many minutes; the kernel runs the full
selection. ``AD_FAST_BENCH_FAST=1`` shrinks everything.
    /work/venv/bin/python -m pytest benchmarks/bench_kcenter_greedy.py --benchmark-columns=min,mean,rounds
"""

from __future__ import annotations

import os

import pytest
import torch

from ad_fast.ops import kcenter_greedy
from ad_fast.ops.kcenter_greedy import kcenter_greedy_reference, random_projection

FAST = os.environ.get("AD_FAST_BENCH_FAST") == "1"
N, D, PROJ = (20_000, 64, 32) if FAST else (200_000, 1536, 128)
REF_PICKS = 10 if FAST else 50


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
def test_kcenter_kernel(benchmark, projected, ratio):
    benchmark.group = f"kcenter-N{N}-ratio{ratio}"
    picks = int(N * ratio)
    result = benchmark.pedantic(
        lambda: kcenter_greedy(projected, picks, projection_dim=None, start_index=0, backend="kernel"),
        rounds=1,
        iterations=1,
    )
    benchmark.extra_info["picks"] = picks
    benchmark.extra_info["ms_per_pick"] = benchmark.stats.stats.min / picks * 1e3
    reference = kcenter_greedy_reference(projected, REF_PICKS, projection_dim=None, start_index=0)
    assert torch.equal(result[:REF_PICKS], reference)


def test_kcenter_reference_loop(benchmark, projected):
    benchmark.group = "kcenter-reference-per-pick"
    benchmark.pedantic(
        lambda: kcenter_greedy_reference(projected, REF_PICKS, projection_dim=None, start_index=0), rounds=1, iterations=1
    )
    benchmark.extra_info["picks"] = REF_PICKS
    benchmark.extra_info["ms_per_pick"] = benchmark.stats.stats.min / REF_PICKS * 1e3


def test_kcenter_kernel_per_pick(benchmark, projected):
    benchmark.group = "kcenter-reference-per-pick"
    benchmark.pedantic(
        lambda: kcenter_greedy(projected, REF_PICKS, projection_dim=None, start_index=0, backend="kernel"),
        rounds=3,
        iterations=1,
    )
    benchmark.extra_info["picks"] = REF_PICKS
    benchmark.extra_info["ms_per_pick"] = benchmark.stats.stats.min / REF_PICKS * 1e3
