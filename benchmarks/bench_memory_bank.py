"""MemoryBank.load of a large bank: memory-mapped (``mmap=True``) vs read into memory, file in the page cache.

Full size: N=100k rows x D=1536 float32 (586 MiB); ``AD_FAST_BENCH_FAST=1`` shrinks it to 5000 x 128.
    pytest benchmarks/bench_memory_bank.py --benchmark-only --benchmark-columns=median,rounds
Extra info per case: anonymous memory the loaded bank adds (RssAnon; a mapped bank's pages count as file-backed),
and the time of the first 1-NN search of 256 queries after a load (it pages a mapped bank in).
"""

from __future__ import annotations

import time

import pytest
import torch

from ad_fast.ops import MemoryBank
from bench_utils import pick, rss_kib

N, D = pick((100_000, 1536), (5000, 128))
ROUNDS = pick(5, 1)


@pytest.fixture(scope="module")
def bank_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("bank") / "bank.safetensors"
    MemoryBank(D).add(torch.randn(N, D, generator=torch.Generator().manual_seed(0))).save(path)
    return path


@pytest.mark.parametrize("mmap", [False, True], ids=["read", "mmap"])
def test_memory_bank_load(benchmark, bank_file, mmap):
    benchmark.group = "memory-bank-load"
    query = torch.randn(256, D)
    before = rss_kib("RssAnon")
    bank = MemoryBank.load(bank_file, mmap=mmap)
    benchmark.extra_info["anon_MiB_after_load"] = round((rss_kib("RssAnon") - before) / 1024, 1)
    start = time.perf_counter()
    bank.search(query, k=1)
    benchmark.extra_info["first_search_s"] = round(time.perf_counter() - start, 3)
    benchmark.extra_info["bank_MiB"] = round(bank.rows.nbytes / 2**20, 1)
    del bank
    benchmark.pedantic(lambda: MemoryBank.load(bank_file, mmap=mmap), rounds=ROUNDS, iterations=1, warmup_rounds=0)
