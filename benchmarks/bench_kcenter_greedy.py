"""Greedy k-center coreset: ad_fast's lazy block kernel vs the per-iteration PyTorch reference loop.

Full size: N=200k rows of 128 dims, 2% and 10% picks, on two inputs:

* ``gauss``: Gaussian rows, D=1536 projected to 128, from row 0 (nothing is close to anything: no row skips a pick);
* ``patches``: DMAD's coreset input on real-like patch features: efficientnet_lite0 (ImageNet weights) patch
  features of the demo's ``brick`` category (206 train images at 256 px; DMAD's encoder and ``image_size``),
  projected to 128 with the running min-distance starting from the mean distance to 10 random rows
  (:func:`ad_fast.models.dmad.banks.coreset_input`). Built once (a minute or two) and cached under the temporary
  folder (``ad_fast_kcenter_patches_*.pt``).

The reference loop is timed over REF_PICKS picks and its per-pick time recorded, since thousands of picks of it
take many minutes; the kernel runs the full selection and its first REF_PICKS picks are checked against the
reference. ``AD_FAST_BENCH_FAST=1`` shrinks everything.
    pytest benchmarks/bench_kcenter_greedy.py --benchmark-only --benchmark-group-by=group \
        --benchmark-columns=min,mean,rounds
Old-vs-new kernel comparison (two builds, identical picks): benchmarks/kcenter_ab.py.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

from ad_fast.ops import kcenter_greedy
from ad_fast.ops.kcenter_greedy import kcenter_greedy_reference, random_projection
from bench_utils import pick, synchronized

N, D, PROJ = pick((200_000, 1536, 128), (20_000, 64, 32))
PATCH_ROWS, PATCH_IMAGE_SIZE = pick((200_000, 256), (1_000, 64))
REF_PICKS = pick(50, 10)
RATIOS = [0.02, 0.1]


def record_per_pick(benchmark, picks: int) -> None:
    benchmark.extra_info["picks"] = picks
    stats = getattr(benchmark, "stats", None)  # absent under --benchmark-disable
    if stats is not None:
        benchmark.extra_info["ms_per_pick"] = round(stats.stats.min / picks * 1e3, 3)


def gaussian_rows(n: int = N) -> torch.Tensor:
    """Gaussian rows [n, PROJ]: D-dim N(0, 1) rows projected (projection itself is one GEMM, not measured here)."""
    gen = torch.Generator().manual_seed(0)
    rows = torch.empty(n, PROJ)
    for start in range(0, n, 20_000):  # project in chunks: the [N, D] matrix would be 1.2 GB
        chunk = torch.randn(min(20_000, n - start), D, generator=gen)
        rows[start : start + chunk.shape[0]] = chunk @ random_projection(D, PROJ, seed=0)
    return rows


@torch.no_grad()
def patch_rows(n: int = PATCH_ROWS, image_size: int = PATCH_IMAGE_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """DMAD's coreset input on real-like patch features: (float32 [n, 128] projected rows, float32 [n] init).

    The first ``n`` patch features (in image order) of the demo's ``brick`` training images, cached in a file.
    """
    cache = Path(tempfile.gettempdir()) / f"ad_fast_kcenter_patches_{n}_{image_size}.pt"
    if cache.is_file():
        saved = torch.load(cache, weights_only=True)
        return saved["z"], saved["init"]
    from ad_fast import DMAD
    from ad_fast._io import atomic_path
    from ad_fast.data import make_demo_dataset, read_image
    from ad_fast.models.dmad.banks import coreset_input

    model = DMAD(backbone="efficientnet_lite0", mode="memory_bank", image_size=image_size, progress=False)
    per_image = model.encoder(torch.rand(1, 3, image_size, image_size))[0].shape[1]
    n_images = -(-n // per_image)
    with tempfile.TemporaryDirectory() as folder:
        root = make_demo_dataset(Path(folder) / "demo", categories=["brick"], n_train=n_images, n_test_good=1,
                                 n_per_defect=0, size=image_size)
        files = sorted((root / "brick" / "train").rglob("*.png"))
        features = torch.cat([model.encoder(torch.stack([read_image(f, (image_size, image_size))
                                                         for f in files[s : s + 8]]))[0].flatten(0, 1)
                              for s in range(0, len(files), 8)])[:n]
    z, init = coreset_input(features)
    with atomic_path(cache) as partial:
        torch.save({"z": z, "init": init}, partial)
    return z, init


@pytest.fixture(scope="module")
def projected() -> torch.Tensor:
    return gaussian_rows()


@pytest.fixture(scope="module")
def patches() -> tuple[torch.Tensor, torch.Tensor]:
    return patch_rows()


@pytest.mark.parametrize("ratio", RATIOS)
def test_kcenter_kernel(benchmark, projected, ratio, device):
    benchmark.group = f"kcenter-gauss-N{N}-ratio{ratio}"
    picks = int(N * ratio)
    rows = projected.to(device)
    fn = synchronized(lambda: kcenter_greedy(rows, picks, projection_dim=None, start_index=0, backend="kernel"), device)
    result = benchmark.pedantic(fn, rounds=1, iterations=1)
    record_per_pick(benchmark, picks)
    reference = kcenter_greedy_reference(projected, REF_PICKS, projection_dim=None, start_index=0)
    assert torch.equal(result[:REF_PICKS].cpu(), reference)


@pytest.mark.parametrize("ratio", RATIOS)
def test_kcenter_kernel_patches(benchmark, patches, ratio, device):
    benchmark.group = f"kcenter-patches-N{PATCH_ROWS}-ratio{ratio}"
    z, init = patches
    picks = int(z.shape[0] * ratio)
    rows, start = z.to(device), init.to(device)
    fn = synchronized(lambda: kcenter_greedy(rows, picks, projection_dim=None, init_distances=start,
                                             backend="kernel"), device)
    result = benchmark.pedantic(fn, rounds=1, iterations=1)
    record_per_pick(benchmark, picks)
    reference = kcenter_greedy_reference(z, REF_PICKS, projection_dim=None, init_distances=init)
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
