"""DMAD memory_bank: what the patch-embedding size costs and buys (issue 19, item 3).

Outcome (RESULTS.md): on efficientnet_lite0 no size below the paper's 1536 kept image AUROC, AUPRO and the class
margin on both sets, so the default stays 1536; ``embed_dim`` is the user's speed / separation knob.

For each ``embed_dim`` the same model (efficientnet_lite0, real ImageNet weights, 2 % coreset) is fitted and
evaluated on generated categories, and the run prints fit and predict seconds with the scores that a smaller
embedding could lose: image AUROC, pixel AUPRO and the class margin (lowest defect score - highest good score) /
std(good scores), per category and as a mean. Two sets, both from the demo's texture generator:

* ``demo``: the three demo categories (brick, gravel, marble), 32 train + 10 good + 5 per defect test images at
  256 px;
* ``large``: one category (brick) at the issue's shape, 209 train + 83 test images at 900 px.

``AD_FAST_BENCH_FAST=1``: 4 + 3 images at 64 px, one size (what CI runs). The data are generated once into
``AD_FAST_BENCH_DATA`` (default: a temporary folder).

Run: ``OMP_NUM_THREADS=2 python -m pytest benchmarks/bench_dmad_embedding.py --benchmark-disable -s``
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from ad_fast import DMAD
from ad_fast.data import make_demo_dataset, open_dataset
from ad_fast.evaluation import evaluate
from bench_utils import FAST, margin, pick

SETS = pick(
    {"demo": (("brick", "gravel", "marble"), 32, 10, 5, 256), "large": (("brick",), 209, 23, 20, 900)},
    {"demo": (("brick",), 4, 2, 1, 64)},
)
IMAGE_SIZE = pick(256, 64)
EMBED_DIMS = pick([1536, 1024, 608, 304, 152], [32])
OPTIONS = pick(dict(backbone="efficientnet_lite0"), dict(backbone="test_resnet", weights="random"))


@pytest.fixture(scope="module", params=list(SETS))
def dataset(request, tmp_path_factory):
    categories, n_train, n_good, n_defect, size = SETS[request.param]
    base = os.environ.get("AD_FAST_BENCH_DATA") or tmp_path_factory.mktemp("embedding")
    root = Path(base) / f"embedding-{request.param}-{'fast' if FAST else 'full'}"
    make_demo_dataset(root, categories=categories, n_train=n_train, n_test_good=n_good, n_per_defect=n_defect,
                      size=size)
    return request.param, open_dataset("mvtec", root, "train", size=IMAGE_SIZE), \
        open_dataset("mvtec", root, "test", size=IMAGE_SIZE)


@pytest.mark.parametrize("embed_dim", EMBED_DIMS)
def test_embedding_size(dataset, embed_dim):
    name, train, test = dataset
    margins: dict[str, float] = {}
    model = DMAD(mode="memory_bank", image_size=IMAGE_SIZE, embed_dim=embed_dim, progress=False, **OPTIONS)
    start = time.perf_counter()
    report = evaluate(model, test, train, on_category=lambda c, p: margins.__setitem__(
        c, margin(p.raw_scores if p.raw_scores is not None else p.scores, p.labels)))
    wall = time.perf_counter() - start
    for row in report.rows:
        print(f"\n{name} embed_dim={embed_dim} {row['category']}: I-AUROC {row['I-AUROC']:.4f} "
              f"AUPRO {row['AUPRO']:.4f} margin {margins[row['category']]:+.2f} fit {row['fit_seconds']:.1f} s "
              f"predict {row['ms_per_image']:.1f} ms/image")
    mean = report.mean
    print(f"{name} embed_dim={embed_dim} mean: I-AUROC {mean['I-AUROC']:.4f} AUPRO {mean['AUPRO']:.4f} "
          f"margin {np.mean(list(margins.values())):+.2f} wall {wall:.1f} s")
    assert 0.0 <= mean["I-AUROC"] <= 1.0 and np.isfinite(list(margins.values())).all()
