"""DMAD bank construction and scoring: kernels vs the pure-PyTorch reference path, with peak memory.

Workload (issue 8): one 200-image class at 256 px (patch grid 32 x 32, C = 1536), efficientnet_lite0 with its real
ImageNet weights; the 2 % normal coreset (4,096 of 204,800 patches); memory-bank scoring of 200 query images.
``AD_FAST_BENCH_FAST=1`` shrinks it to 8 images at 64 px, C = 128.

Run: ``OMP_NUM_THREADS=2 python -m pytest benchmarks/bench_dmad.py --benchmark-only -s``
(``-s`` prints the peak-memory lines; ``--benchmark-disable`` runs each case once).
"""

from __future__ import annotations

import os
import threading
import time

import pytest
import torch

from ad_fast import DMAD, ops
from ad_fast.models.dmad.banks import coreset_indices
from ad_fast.synthesis import procedural_texture

FAST = os.environ.get("AD_FAST_BENCH_FAST") == "1"
N_IMAGES, SIZE, DIM = (8, 64, 128) if FAST else (200, 256, 1536)
BACKENDS = ("kernel", "reference")
DEVICE = os.environ.get("AD_FAST_BENCH_DEVICE", "cpu")
WEIGHTS = os.environ.get("AD_FAST_BENCH_WEIGHTS")  # efficientnet-lite0 package .pth where the package is absent


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory(fn):
    """(result, peak extra resident memory in bytes, or peak CUDA allocation on a GPU) of one call of ``fn``.

    CPU: a thread samples the resident set every 2 ms during the call (one call: the timed one), so the time
    and the memory come from the same run.
    """
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        result = fn()
        torch.cuda.synchronize()
        return result, torch.cuda.max_memory_allocated() - base
    base, peak, running = _rss_bytes(), [0], [True]

    def sample():
        while running[0]:
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        result = fn()
    finally:
        running[0] = False
        thread.join()
    return result, max(peak[0], _rss_bytes()) - base


def _report(name: str, nbytes: int, benchmark) -> None:
    seconds = benchmark.stats.stats.min if benchmark.stats else float("nan")
    print(f"\n[dmad bench] {name}: {seconds:.2f} s, peak extra memory {nbytes / 2**20:.1f} MiB")


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """One 'class': crops of a single procedural texture, [N_IMAGES, 3, SIZE, SIZE] in [0, 1]."""
    source = procedural_texture(2 * SIZE, 0, kind="marble")
    generator = torch.Generator().manual_seed(0)
    offsets = torch.randint(0, SIZE, (N_IMAGES, 2), generator=generator)
    return torch.stack([source[:, y : y + SIZE, x : x + SIZE] for y, x in offsets.tolist()])


@pytest.fixture(scope="module")
def model(images) -> DMAD:
    return DMAD(backbone="efficientnet_lite0", weights=WEIGHTS, mode="memory_bank", image_size=SIZE, embed_dim=DIM,
                batch_size=16, device=DEVICE, progress=False).fit(images)


@pytest.fixture(scope="module")
def features(model, images) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([model.encoder(b.to(DEVICE))[0] for b in images.split(16)]).reshape(-1, DIM)


@pytest.mark.benchmark(group="dmad-feature-extraction")
def test_feature_extraction(benchmark, model, images):
    def run():
        with torch.inference_mode():
            return [model.encoder(b.to(DEVICE))[0] for b in images.split(16)]

    _, nbytes = peak_memory(lambda: benchmark.pedantic(run, rounds=1, iterations=1))
    _report(f"feature extraction, {N_IMAGES} images at {SIZE}", nbytes, benchmark)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.benchmark(group="dmad-coreset")
def test_coreset(benchmark, features, backend):
    if backend == "kernel" and not ops.backend_info()["compiled"]:
        pytest.skip("ad_fast._C not built")

    def run():
        with ops.use_backend(backend):
            return coreset_indices(features, 0.02, progress=False)

    picks, nbytes = peak_memory(lambda: benchmark.pedantic(run, rounds=1, iterations=1))
    _report(f"coreset 2% of {features.shape[0]} x {DIM} ({backend})", nbytes, benchmark)
    assert len(picks) == int(features.shape[0] * 0.02)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.benchmark(group="dmad-memory-bank-scoring")
def test_memory_bank_scoring(benchmark, model, features, backend):
    """Bank scoring only (kNN to M_n + upsample + blur), on precomputed patch features of N_IMAGES images."""
    if backend == "kernel" and not ops.backend_info()["compiled"]:
        pytest.skip("ad_fast._C not built")
    grid = SIZE // 8
    q = features.reshape(N_IMAGES, grid * grid, DIM)

    def run():
        with ops.use_backend(backend), torch.inference_mode():
            return [model._upsample(model._patch_scores(b).reshape(b.shape[0], 1, grid, grid), (SIZE, SIZE))
                    for b in q.split(16)]

    _, nbytes = peak_memory(lambda: benchmark.pedantic(run, rounds=1, iterations=1))
    _report(f"memory-bank scoring of {N_IMAGES} images vs {len(model.normal_bank)} rows ({backend})", nbytes, benchmark)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.benchmark(group="dmad-predict-end-to-end")
def test_predict(benchmark, model, images, backend):
    if backend == "kernel" and not ops.backend_info()["compiled"]:
        pytest.skip("ad_fast._C not built")

    def run():
        with ops.use_backend(backend):
            return model.predict(images, batch_size=16)

    result, nbytes = peak_memory(lambda: benchmark.pedantic(run, rounds=1, iterations=1))
    _report(f"predict {N_IMAGES} images ({backend})", nbytes, benchmark)
    assert result.anomaly_map.shape == (N_IMAGES, 1, SIZE, SIZE)
