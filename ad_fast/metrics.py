"""Image- and pixel-level anomaly-detection metrics: AUROC, AP, F1-max and AUPRO.

Exactness: AUROC, AP and F1-max are exact (ties handled as scikit-learn does: AUROC is the trapezoidal area, i.e. the
Mann-Whitney statistic with ties counted 1/2; AP is ``Σ (R_n - R_{n-1}) P_n`` over distinct thresholds). They sort the
positive and the negative scores separately (one float32 copy of the scores, no index arrays) and count with
``searchsorted`` in chunks, so a full MVTec category at 256² (~30 M pixels) takes a few seconds and about
5 bytes of extra memory per pixel. AUPRO (``num_thresholds=None``) is the exact area under the per-region-overlap vs
FPR curve up to ``fpr_limit`` over every distinct threshold, divided by ``fpr_limit`` (the MVTec AD definition);
``num_thresholds=200`` gives the 200-threshold variant the MetaUAS/cflow code reports.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

_CHUNK = 1 << 20


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        return x.numpy()
    return np.asarray(x)


def _binary_inputs(scores: Any, labels: Any, names: tuple[str, str] = ("scores", "labels")) -> tuple[np.ndarray, np.ndarray]:
    """Flattened float scores and bool labels; checks sizes, finiteness and that both classes occur."""
    scores, labels = _as_numpy(scores), _as_numpy(labels)
    if not (np.issubdtype(scores.dtype, np.floating) or np.issubdtype(scores.dtype, np.integer)):
        raise TypeError(f"{names[0]}: expected real numbers, got dtype {scores.dtype}")
    if scores.size != labels.size:
        raise ValueError(f"{names[0]} and {names[1]}: expected the same number of elements, "
                         f"got {scores.size} and {labels.size}")
    scores = scores.reshape(-1)
    if not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype(np.float64)
    if not np.isfinite(scores).all():
        raise ValueError(f"{names[0]}: contains NaN or infinite values")
    labels = labels.reshape(-1)
    if labels.dtype != bool:
        if not np.isin(labels, (0, 1)).all():
            raise ValueError(f"{names[1]}: expected binary values (0/1 or bool)")
        labels = labels.astype(bool)
    n_pos = int(np.count_nonzero(labels))
    if n_pos == 0 or n_pos == labels.size:
        raise ValueError(f"{names[1]}: need both normal (0) and anomalous (1) entries, got only "
                         f"{'anomalous' if n_pos else 'normal'} ones ({labels.size})")
    return scores, labels


def _sorted_split(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pos, neg = scores[labels], scores[~labels]
    pos.sort()
    neg.sort()
    return pos, neg


def _chunks(n: int):
    for start in range(0, n, _CHUNK):
        yield slice(start, min(start + _CHUNK, n))


def _auroc_sorted(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score_pos > score_neg) + ½ P(equal), from ascending-sorted positive and negative scores."""
    wins = 0.0
    for part in _chunks(neg.size):
        values = neg[part]
        right = np.searchsorted(pos, values, side="right")
        left = np.searchsorted(pos, values, side="left")
        wins += float(np.sum(pos.size - right, dtype=np.int64)) + 0.5 * float(np.sum(right - left, dtype=np.int64))
    return wins / (float(pos.size) * float(neg.size))


def _pr_sums(pos: np.ndarray, neg: np.ndarray) -> tuple[float, float, float]:
    """(AP, F1-max, its threshold): precision/F1 at the threshold "score >= x" for every positive score x."""
    n_pos = pos.size
    ap_sum, best_f1, best_threshold = 0.0, -1.0, float(pos[-1])
    for part in _chunks(n_pos):
        values = pos[part]
        tp = (n_pos - np.searchsorted(pos, values, side="left")).astype(np.float64)
        fp = (neg.size - np.searchsorted(neg, values, side="left")).astype(np.float64)
        ap_sum += float(np.sum(tp / (tp + fp)))
        f1 = 2.0 * tp / (tp + fp + n_pos)
        i = int(np.argmax(f1))
        if f1[i] > best_f1:
            best_f1, best_threshold = float(f1[i]), float(values[i])
    return ap_sum / n_pos, best_f1, best_threshold


def auroc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve (exact; equals ``sklearn.metrics.roc_auc_score``).

    Args:
        scores (array/Tensor[N] or any shape): higher = more anomalous.
        labels (same number of elements): 1/True anomalous, 0/False normal.

    Raises:
        ValueError: sizes differ, NaN/inf scores, non-binary labels, or only one class present.
    """
    return _auroc_sorted(*_sorted_split(*_binary_inputs(scores, labels)))


def average_precision(scores: Any, labels: Any) -> float:
    """Average precision (exact; equals ``sklearn.metrics.average_precision_score``). Arguments as :func:`auroc`."""
    return _pr_sums(*_sorted_split(*_binary_inputs(scores, labels)))[0]


def f1_max(scores: Any, labels: Any, return_threshold: bool = False) -> float | tuple[float, float]:
    """Maximum over thresholds ``score >= t`` of ``2PR/(P+R)`` (exact), optionally with the best ``t``."""
    _, best, threshold = _pr_sums(*_sorted_split(*_binary_inputs(scores, labels)))
    return (best, threshold) if return_threshold else best


def binary_metrics(scores: Any, labels: Any) -> dict[str, float]:
    """``{"auroc", "ap", "f1_max", "f1_threshold"}`` from one sort (see :func:`auroc` for the arguments)."""
    pos, neg = _sorted_split(*_binary_inputs(scores, labels))
    ap, best, threshold = _pr_sums(pos, neg)
    return {"auroc": _auroc_sorted(pos, neg), "ap": ap, "f1_max": best, "f1_threshold": threshold}


def curves(scores: Any, labels: Any, max_points: int = 512) -> dict[str, np.ndarray]:
    """ROC and PR curves for plotting, evaluated exactly at up to ``max_points`` thresholds spread over the ranks.

    Returns:
        dict with ``fpr, tpr`` (ROC, from (0, 0) to (1, 1)) and ``recall, precision`` (PR), float64 arrays.
    """
    scores, labels = _binary_inputs(scores, labels)
    pos, neg = _sorted_split(scores, labels)
    everything = np.sort(scores)
    thresholds = np.unique(everything[np.linspace(0, everything.size - 1, max_points).round().astype(np.int64)])[::-1]
    tp = (pos.size - np.searchsorted(pos, thresholds, side="left")).astype(np.float64)
    fp = (neg.size - np.searchsorted(neg, thresholds, side="left")).astype(np.float64)
    return {
        "fpr": np.concatenate([[0.0], fp / neg.size]), "tpr": np.concatenate([[0.0], tp / pos.size]),
        "recall": tp / pos.size, "precision": tp / np.maximum(tp + fp, 1.0), "thresholds": thresholds,
    }


def _maps_and_masks(maps: Any, masks: Any) -> tuple[np.ndarray, np.ndarray]:
    maps, masks = _as_numpy(maps), _as_numpy(masks)
    if maps.ndim == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if masks.ndim == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if maps.ndim == 2:
        maps, masks = maps[None], masks[None] if masks.ndim == 2 else masks
    if maps.ndim != 3 or maps.shape != masks.shape:
        raise ValueError(f"maps and masks: expected matching shapes [B, H, W] or [B, 1, H, W], "
                         f"got {maps.shape} and {masks.shape}")
    return maps, masks


def aupro(maps: Any, masks: Any, fpr_limit: float = 0.3, num_thresholds: int | None = None) -> float:
    """Area under the per-region-overlap (PRO) curve up to ``fpr_limit``, divided by ``fpr_limit``.

    Regions are the 8-connected components of each ground-truth mask; PRO(t) is the mean over all regions of the
    share of the region's pixels with score >= t; FPR(t) the share of normal pixels with score >= t.

    Args:
        maps (array/Tensor[B, H, W] or [B, 1, H, W]): anomaly maps.
        masks (same shape): binary ground truth.
        fpr_limit: integrate FPR over [0, fpr_limit] (default 0.3).
        num_thresholds: ``None`` (default): exact over every distinct score, the curve interpolated linearly at
            ``fpr_limit``. An int: the MetaUAS/cflow recipe: that many equally spaced thresholds from the map
            minimum (score > t), points with FPR < ``fpr_limit`` kept, FPR min-max rescaled to [0, 1], trapezoid.
    """
    maps, masks = _maps_and_masks(maps, masks)
    scores, labels = _binary_inputs(maps, masks, ("maps", "masks"))
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit: expected a value in (0, 1], got {fpr_limit!r}")
    region_of_pixel, region_sizes = _regions(labels.reshape(maps.shape))
    pos_scores = scores[labels]
    pos_regions = region_of_pixel[labels.reshape(maps.shape)]
    neg = scores[~labels]
    neg.sort()
    if num_thresholds is not None:
        return _aupro_thresholded(pos_scores, pos_regions, region_sizes, neg, fpr_limit, int(num_thresholds),
                                  float(scores.min()), float(scores.max()))
    order = np.argsort(pos_scores, kind="stable")
    pos = pos_scores[order]
    weights = 1.0 / (region_sizes[pos_regions[order]] * region_sizes.size)
    cum = np.concatenate([[0.0], np.cumsum(weights)])  # cum[i] = weight of pos[:i]
    total = cum[-1]

    def pro_at_least(v: np.ndarray) -> np.ndarray:
        return total - cum[np.searchsorted(pos, v, side="left")]

    def pro_above(v: np.ndarray) -> np.ndarray:
        return total - cum[np.searchsorted(pos, v, side="right")]

    n_neg = neg.size
    limit = fpr_limit * n_neg
    full = n_neg if limit >= n_neg else n_neg - int(np.searchsorted(neg, neg[n_neg - 1 - int(limit)], side="right"))
    area = 0.0
    for part in _chunks(full):  # the `full` largest negatives lie wholly inside [0, fpr_limit]
        values = neg[n_neg - full:][part]
        area += float(np.sum(pro_above(values) + pro_at_least(values))) * 0.5
    if full < limit:  # the tied group of the negative at the cut, linearly interpolated
        value = neg[n_neg - 1 - int(limit)]
        group = int(np.searchsorted(neg, value, side="right") - np.searchsorted(neg, value, side="left"))
        a, b = float(pro_above(np.array([value]))[0]), float(pro_at_least(np.array([value]))[0])
        width = limit - full
        area += width * (a + (a + (b - a) * width / group)) * 0.5
    return area / n_neg / fpr_limit


def _regions(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Global region id per pixel ``[B, H, W]`` (int32, -1 outside) and the size of each region (float64)."""
    from scipy import ndimage

    ids = np.full(masks.shape, -1, dtype=np.int32)
    offset = 0
    for i, mask in enumerate(masks):
        labeled, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
        ids[i][labeled > 0] = labeled[labeled > 0] - 1 + offset
        offset += count
    sizes = np.bincount(ids[ids >= 0], minlength=offset).astype(np.float64)
    return ids, sizes


def _aupro_thresholded(pos: np.ndarray, regions: np.ndarray, sizes: np.ndarray, neg: np.ndarray, fpr_limit: float,
                       num_thresholds: int, low: float, high: float) -> float:
    if num_thresholds < 2:
        raise ValueError(f"num_thresholds: expected an int >= 2 or None, got {num_thresholds!r}")
    thresholds = low + (high - low) / num_thresholds * np.arange(num_thresholds)
    fpr = (neg.size - np.searchsorted(neg, thresholds, side="right")) / neg.size
    order = np.lexsort((pos, regions))
    pos, regions = pos[order], regions[order]
    starts = np.searchsorted(regions, np.arange(sizes.size), side="left")
    pro = np.zeros(num_thresholds)
    for r, start in enumerate(starts):
        values = pos[start:start + int(sizes[r])]
        pro += (values.size - np.searchsorted(values, thresholds, side="right")) / values.size
    pro /= sizes.size
    keep = fpr < fpr_limit
    fpr, pro = fpr[keep], pro[keep]
    if fpr.size < 2 or fpr.max() == fpr.min():
        raise ValueError("aupro: fewer than two thresholds with distinct FPR below fpr_limit; raise num_thresholds")
    fpr = (fpr - fpr.min()) / (fpr.max() - fpr.min())
    return float(np.trapezoid(pro[::-1], fpr[::-1]))  # thresholds descending: FPR and PRO ascending


def confusion_metrics(predicted: Any, truth: Any) -> dict[str, float | int | None]:
    """Counts and rates of a thresholded decision: ``{"TP", "FP", "TN", "FN", "precision", "recall", "FPR", "F1",
    "accuracy"}``; a rate whose denominator is 0 is ``None`` (e.g. recall with no positive).

    Args:
        predicted (array/Tensor, any shape): binary decisions (bool or 0/1), True = anomalous.
        truth (same number of elements): binary ground truth.
    """
    predicted, truth = _as_numpy(predicted).reshape(-1), _as_numpy(truth).reshape(-1)
    if predicted.size != truth.size:
        raise ValueError(f"predicted and truth: expected the same number of elements, got {predicted.size} and "
                         f"{truth.size}")
    predicted, truth = predicted.astype(bool), truth.astype(bool)
    tp = int(np.count_nonzero(predicted & truth))
    fp = int(np.count_nonzero(predicted & ~truth))
    fn = int(np.count_nonzero(~predicted & truth))
    tn = int(predicted.size - tp - fp - fn)

    def ratio(a: int, b: int) -> float | None:
        return a / b if b else None

    return {"TP": tp, "FP": fp, "TN": tn, "FN": fn, "precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn),
            "FPR": ratio(fp, fp + tn), "F1": ratio(2 * tp, 2 * tp + fp + fn), "accuracy": ratio(tp + tn, predicted.size)}


def image_metrics(scores: Any, labels: Any) -> dict[str, float]:
    """``{"I-AUROC", "I-AP", "I-F1max"}`` for image scores ``[N]`` and labels ``[N]``."""
    m = binary_metrics(scores, labels)
    return {"I-AUROC": m["auroc"], "I-AP": m["ap"], "I-F1max": m["f1_max"]}


def pixel_metrics(maps: Any, masks: Any, pro: bool = True, fpr_limit: float = 0.3,
                  pro_thresholds: int | None = None) -> dict[str, float]:
    """``{"P-AUROC", "P-AP", "P-F1max", "AUPRO"}`` for maps and masks ``[B, (1,) H, W]`` (AUPRO only if ``pro``)."""
    maps, masks = _maps_and_masks(maps, masks)
    m = binary_metrics(maps, masks)
    out = {"P-AUROC": m["auroc"], "P-AP": m["ap"], "P-F1max": m["f1_max"]}
    if pro:
        out["AUPRO"] = aupro(maps, masks, fpr_limit, pro_thresholds)
    return out
