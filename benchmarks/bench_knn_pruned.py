"""Nearest bank row on real DMAD patch features: knn_pruned (MemoryBank.search) vs the full knn kernel, the
reference, chunked torch.cdist and faiss-cpu IndexFlatL2, in one run.

Workload: ``DMAD(backbone="efficientnet_lite0", mode="memory_bank", coreset_ratio=0.1)`` fitted on 40 images of the
demo's ``brick`` category at 256 px (bank ~3,300 x 1,128, the isometric coordinates), queries = the patch features of
8 test images (8,192 rows). Every case first checks that its indices equal knn's (float64 tie-breaks aside, the
pruned search must agree exactly). ``AD_FAST_BENCH_FAST=1``: 64 px images (a bank too small to prune, a smoke run).

Run: ``OMP_NUM_THREADS=2 python -m pytest benchmarks/bench_knn_pruned.py --benchmark-only -p no:randomly``
"""

from __future__ import annotations

import pytest
import torch

from ad_fast import DMAD
from ad_fast.data import make_demo_dataset, read_image
from ad_fast.ops import knn
from ad_fast.ops.knn import knn_reference
from bench_utils import pick

IMAGE_SIZE, FILE_SIZE, N_TRAIN = pick((256, 256, 40), (64, 64, 6))
CDIST_CHUNK = 1024


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    root = make_demo_dataset(tmp_path_factory.mktemp("knn_pruned"), categories=["brick"], n_train=N_TRAIN,
                             n_test_good=4, n_per_defect=1, size=FILE_SIZE)
    model = DMAD(backbone="efficientnet_lite0", mode="memory_bank", image_size=IMAGE_SIZE, coreset_ratio=0.1,
                 progress=False)
    model._fit(root / "brick" / "train")
    files = sorted((root / "brick" / "test").rglob("*.png"))[:8]
    query = model.encoder(torch.stack([read_image(f, (IMAGE_SIZE, IMAGE_SIZE)) for f in files]))[0]
    return model.normal_bank, query.reshape(-1, query.shape[-1]).contiguous()


def _cdist(query, bank):
    parts = [torch.cdist(rows, bank).min(1) for rows in query.split(CDIST_CHUNK)]
    return torch.cat([p.values for p in parts])[:, None], torch.cat([p.indices for p in parts])[:, None]


@pytest.mark.parametrize("impl", ["ad_fast_pruned", "ad_fast_knn", "reference", "cdist", "faiss_flat_l2"])
@pytest.mark.benchmark(group="knn-pruned-dmad-features")
def test_nearest_row(benchmark, features, impl):
    bank, query = features
    rows = bank.rows
    if impl == "ad_fast_pruned":
        bank.search(query)  # builds the projection index once, as the first predict batch does
        fn = lambda: bank.search(query)  # noqa: E731
    elif impl == "ad_fast_knn":
        fn = lambda: knn(query, rows, 1, backend="kernel")  # noqa: E731
    elif impl == "reference":
        fn = lambda: knn_reference(query, rows, 1)  # noqa: E731
    elif impl == "cdist":
        fn = lambda: _cdist(query, rows)  # noqa: E731
    else:
        faiss = pytest.importorskip("faiss")
        faiss.omp_set_num_threads(torch.get_num_threads())
        index = faiss.IndexFlatL2(rows.shape[1])
        index.add(rows.numpy())
        fn = lambda: tuple(torch.from_numpy(a) for a in index.search(query.numpy(), 1))  # noqa: E731
    _, expected = knn(query, rows, 1, backend="kernel")
    _, got = fn()
    agree = float((got.reshape(-1) == expected.reshape(-1)).double().mean())
    benchmark.extra_info.update({"shape": f"M={query.shape[0]} N={rows.shape[0]} D={rows.shape[1]}",
                                 "index_agreement": agree})
    assert agree == 1.0 if impl == "ad_fast_pruned" else agree > 0.99
    benchmark.pedantic(fn, rounds=3, iterations=1, warmup_rounds=1)
