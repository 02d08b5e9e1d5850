"""ad_fast.metrics against scikit-learn (exact) and a brute-force PRO curve."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from ad_fast import metrics

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def _sklearn_f1_max(scores, labels):
    precision, recall, _ = sklearn_metrics.precision_recall_curve(labels, scores)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-300), 0)
    return f1.max()


@pytest.mark.parametrize("n", [2, 3, 17, 1000, 20001])
@pytest.mark.parametrize("tied", [False, True])
def test_binary_metrics_match_sklearn(n, tied):
    rng = np.random.default_rng(n + tied)
    scores = rng.integers(0, 5, n).astype(np.float64) if tied else rng.normal(size=n)
    labels = rng.random(n) < 0.3
    labels[0], labels[1] = True, False
    got = metrics.binary_metrics(scores, labels)
    assert got["auroc"] == pytest.approx(sklearn_metrics.roc_auc_score(labels, scores), abs=1e-12)
    assert got["ap"] == pytest.approx(sklearn_metrics.average_precision_score(labels, scores), abs=1e-12)
    assert got["f1_max"] == pytest.approx(_sklearn_f1_max(scores, labels), abs=1e-12)
    assert metrics.auroc(torch.from_numpy(scores).float(), torch.from_numpy(labels)) == pytest.approx(
        sklearn_metrics.roc_auc_score(labels, scores.astype(np.float32)), abs=1e-12)


def test_f1_threshold_reproduces_f1():
    rng = np.random.default_rng(0)
    scores, labels = rng.normal(size=300), rng.random(300) < 0.2
    best, threshold = metrics.f1_max(scores, labels, return_threshold=True)
    predicted = scores >= threshold
    tp = np.sum(predicted & labels)
    assert best == pytest.approx(2 * tp / (predicted.sum() + labels.sum()))


def test_known_values():
    assert metrics.auroc([0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1]) == 1.0
    assert metrics.auroc([0.4, 0.3, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert metrics.auroc([0.5, 0.5], [0, 1]) == 0.5
    assert metrics.average_precision([0.1, 0.9, 0.8], [0, 1, 0]) == 1.0


@pytest.mark.parametrize("bad, message", [
    (dict(scores=[0.1, 0.2], labels=[1, 1]), "both"),
    (dict(scores=[0.1, float("nan")], labels=[0, 1]), "NaN"),
    (dict(scores=[0.1, 0.2, 0.3], labels=[0, 1]), "same number"),
    (dict(scores=[0.1, 0.2], labels=[0, 2]), "binary"),
])
def test_bad_input_raises(bad, message):
    with pytest.raises(ValueError, match=message):
        metrics.auroc(**bad)


def _brute_force_aupro(maps, masks, fpr_limit):
    """Every distinct threshold, regions by scipy.ndimage.label (8-connected), trapezoid up to fpr_limit."""
    regions = []
    for i, mask in enumerate(masks):
        labeled, count = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [(i, labeled == r) for r in range(1, count + 1)]
    negatives = maps[~masks]
    points = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        pro = np.mean([np.mean(maps[i][region] >= t) for i, region in regions])
        points.append((np.mean(negatives >= t), pro))
    fpr, pro = np.array(points).T
    inside = fpr <= fpr_limit
    end = np.interp(fpr_limit, fpr, pro)
    fpr = np.concatenate([fpr[inside], [fpr_limit]])
    pro = np.concatenate([pro[inside], [end]])
    return np.trapezoid(pro, fpr) / fpr_limit


def _brute_force_aupro_thresholded(maps, masks, fpr_limit, steps):
    """The cflow/MetaUAS loop: thresholds min + k·(max-min)/steps, score > t, FPR < limit, FPR min-max rescaled."""
    low, high = float(maps.min()), float(maps.max())
    rows = []
    for t in low + (high - low) / steps * np.arange(steps):
        binary = maps > t
        overlaps = []
        for i, mask in enumerate(masks):
            labeled, count = ndimage.label(mask, structure=np.ones((3, 3)))
            overlaps += [binary[i][labeled == r].mean() for r in range(1, count + 1)]
        rows.append((np.sum(binary & ~masks) / np.sum(~masks), np.mean(overlaps)))
    fpr, pro = np.array([r for r in rows if r[0] < fpr_limit]).T
    fpr = (fpr - fpr.min()) / (fpr.max() - fpr.min())
    return sklearn_metrics.auc(fpr, pro)


def _small_case(seed, tied):
    rng = np.random.default_rng(seed)
    maps = rng.integers(0, 6, (3, 11, 13)).astype(np.float32) if tied else rng.random((3, 11, 13), dtype=np.float32)
    masks = np.zeros(maps.shape, dtype=bool)
    masks[0, 2:5, 3:7] = True
    masks[0, 8:10, 9:12] = True
    masks[1, 5, 5] = True
    masks[1, 6, 6] = True  # diagonal neighbour: one 8-connected region
    maps = maps + masks * rng.random(maps.shape, dtype=np.float32)
    return maps, masks


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("fpr_limit", [0.3, 0.05, 1.0])
def test_aupro_exact_matches_brute_force(seed, tied, fpr_limit):
    maps, masks = _small_case(seed, tied)
    expected = _brute_force_aupro(maps, masks, fpr_limit)
    assert metrics.aupro(maps, masks, fpr_limit) == pytest.approx(expected, abs=1e-10)
    assert metrics.aupro(torch.from_numpy(maps)[:, None], torch.from_numpy(masks)[:, None], fpr_limit) == \
        pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize("seed", [0, 1])
def test_aupro_thresholded_matches_cflow_loop(seed):
    maps, masks = _small_case(seed, tied=False)
    expected = _brute_force_aupro_thresholded(maps, masks, 0.3, 200)
    assert metrics.aupro(maps, masks, 0.3, num_thresholds=200) == pytest.approx(expected, abs=1e-10)


def test_aupro_perfect_and_inverted():
    maps, masks = _small_case(0, tied=False)
    assert metrics.aupro(masks.astype(np.float32), masks) == pytest.approx(1.0)
    assert metrics.aupro(1.0 - masks.astype(np.float32), masks) == pytest.approx(0.0)


def test_pixel_metrics_match_sklearn_on_flattened_maps():
    rng = np.random.default_rng(0)
    maps = rng.random((12, 96, 96), dtype=np.float32)
    masks = np.zeros(maps.shape, dtype=bool)
    masks[::3, 40:70, 10:50] = True
    maps += 0.2 * masks
    got = metrics.pixel_metrics(maps, masks)
    flat_maps, flat_masks = maps.reshape(-1), masks.reshape(-1)
    assert got["P-AUROC"] == pytest.approx(sklearn_metrics.roc_auc_score(flat_masks, flat_maps), abs=1e-12)
    assert got["P-AP"] == pytest.approx(sklearn_metrics.average_precision_score(flat_masks, flat_maps), abs=1e-12)
    assert 0.0 < got["AUPRO"] < 1.0
