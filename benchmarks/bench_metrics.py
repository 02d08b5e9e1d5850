"""Pixel metrics on a whole category: ad_fast.metrics (exact, sorted) vs scikit-learn; AUPRO exact vs 200 thresholds."""

from __future__ import annotations

import numpy as np
import pytest

from ad_fast import metrics
from bench_utils import peak_extra_mib, pick

# An MVTec-sized category: 100 test maps at 256² (6.6 M pixels), about 2 % anomalous pixels.
BATCH, SIDE = pick((100, 256), (4, 32))


def _category():
    rng = np.random.default_rng(0)
    maps = rng.random((BATCH, SIDE, SIDE), dtype=np.float32)
    masks = np.zeros(maps.shape, dtype=bool)
    half = SIDE // 2
    masks[::3, half:half + SIDE // 8, half:half + SIDE // 4] = True
    maps += 0.3 * masks
    return maps, masks


@pytest.mark.parametrize("impl", ["ad_fast", "sklearn"])
def test_pixel_auroc_ap(benchmark, impl):
    maps, masks = _category()
    if impl == "ad_fast":
        def fn():
            m = metrics.binary_metrics(maps, masks)
            return m["auroc"], m["ap"]
    else:
        sk = pytest.importorskip("sklearn.metrics")

        def fn():
            return sk.roc_auc_score(masks.ravel(), maps.ravel()), sk.average_precision_score(masks.ravel(), maps.ravel())
    benchmark.group = f"pixel AUROC+AP {BATCH}x{SIDE}x{SIDE}"
    benchmark.extra_info["peak_extra_MiB"] = round(peak_extra_mib(fn), 1)
    auroc, ap = benchmark(fn)
    assert 0.5 < auroc <= 1.0 and 0.0 < ap <= 1.0


@pytest.mark.parametrize("thresholds", [None, 200], ids=["exact", "200-thresholds"])
def test_aupro(benchmark, thresholds):
    maps, masks = _category()
    fn = lambda: metrics.aupro(maps, masks, num_thresholds=thresholds)  # noqa: E731
    benchmark.group = f"AUPRO {BATCH}x{SIDE}x{SIDE}"
    benchmark.extra_info["peak_extra_MiB"] = round(peak_extra_mib(fn), 1)
    assert 0.0 < benchmark(fn) <= 1.0
