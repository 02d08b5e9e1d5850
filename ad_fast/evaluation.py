"""The evaluation protocol: fit (per category or unified), predict the test split, score per category and the mean.

A model is any object with ``fit(dataset)`` and ``predict(images) -> AnomalyResult`` (see ``ad_fast.models``).
Fitting holds a share of the normal training images out and learns the OK/NG decision on it
(:func:`ad_fast.calibration.fit_and_calibrate`), so the thresholded metrics (precision, recall, FPR, F1, accuracy,
confusion counts) use thresholds learned without any test image, beside the threshold-free ones (AUROC, AP, F1-max,
AUPRO).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import functools
import io
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from . import metrics
from ._io import write_text
from .calibration import HOLDOUT, SYNTHETIC, decide, fit_and_calibrate
from .data.dataset import AnomalyDataset
from .decision import Decision
from .results import AnomalyResult
from .thresholds import DEFAULT_SENSITIVITY

IMAGE_METRICS = ("I-AUROC", "I-AP", "I-F1max")
PIXEL_METRICS = ("P-AUROC", "P-AP", "P-F1max", "AUPRO")
METRICS = IMAGE_METRICS + PIXEL_METRICS
RATES = ("precision", "recall", "FPR", "F1", "accuracy")
COUNTS = ("TP", "FP", "TN", "FN")
DECISION_METRICS = tuple(f"{level}-{name}" for level in "IP" for name in RATES + COUNTS)
PER_IMAGE_COLUMNS = ("category", "path", "defect", "label", "raw_score", "score", "decision")


@dataclass
class CategoryPredictions:
    """What a model predicted for one category's test images (``maps`` at the dataset's resolution).

    The threshold-free metrics are computed on the method's own values (``raw_scores``, ``maps``): the
    normalised ones are clipped to [0, 1], and the ties that clipping makes would change AUROC and AP.

    Attributes:
        scores (ndarray[N] float32), labels (ndarray[N] bool), maps (ndarray[N, H, W] float32, the method's own),
        masks (ndarray[N, H, W] bool), paths (list[str]), defects (list[str]).
        raw_scores (ndarray[N] float32): the method's own scores (``scores`` are normalised when decided).
        pred_labels (ndarray[N] bool) and pred_masks (ndarray[N, H, W] bool), or None: the model's OK/NG decision.
        decision: the :class:`~ad_fast.decision.Decision` behind them, or None.
    """

    scores: np.ndarray
    labels: np.ndarray
    maps: np.ndarray
    masks: np.ndarray
    paths: list[str]
    defects: list[str]
    has_masks: bool = True
    raw_scores: np.ndarray | None = None
    pred_labels: np.ndarray | None = None
    pred_masks: np.ndarray | None = None
    decision: Decision | None = None


@dataclass
class EvaluationReport:
    """Per-category metric rows (values in [0, 1], ``None`` where undefined), their mean, and the settings."""

    rows: list[dict[str, Any]]
    config: dict[str, Any]
    images: list[dict[str, Any]] = field(default_factory=list)

    @property
    def mean(self) -> dict[str, Any]:
        """The mean over categories of each metric and rate (categories where it is undefined are left out),
        timing, and the sums of the image counts and confusion counts."""
        out: dict[str, Any] = {"category": "mean"}
        rates = tuple(f"{level}-{name}" for level in "IP" for name in RATES)
        for key in METRICS + rates + ("fit_seconds", "ms_per_image"):
            values = [row[key] for row in self.rows if row.get(key) is not None]
            out[key] = float(np.mean(values)) if values else None
        for key in ("images", "anomalous") + tuple(f"{level}-{name}" for level in "IP" for name in COUNTS):
            values = [row[key] for row in self.rows if row.get(key) is not None]
            out[key] = int(sum(values)) if values else None
        sources = {row.get("threshold_source") for row in self.rows}
        out["threshold_source"] = sources.pop() if len(sources) == 1 else "per category"
        return out

    @property
    def decided(self) -> bool:
        """Whether the model made OK/NG decisions (it held a learned :class:`~ad_fast.decision.Decision`)."""
        return any(row.get("threshold_source") for row in self.rows)

    def columns(self) -> list[str]:
        """Metric columns that have a value in at least one row."""
        return [key for key in METRICS if any(row.get(key) is not None for row in self.rows)]

    def to_markdown(self) -> str:
        """Markdown: the threshold-free metrics in percent (one row per category plus the mean), then, when the
        model decided OK/NG, the metrics at its learned thresholds and where those came from."""
        columns = self.columns()
        header = ["category", *columns, "ms/img"]
        lines = ["Threshold-free metrics (%):", "",
                 "| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
        for row in [*self.rows, self.mean]:
            cells = [str(row["category"])]
            cells += [_percent(row.get(k)) for k in columns]
            cells.append("-" if row.get("ms_per_image") is None else f"{row['ms_per_image']:.1f}")
            lines.append("| " + " | ".join(cells) + " |")
        if not self.decided:
            lines += ["", "No learned threshold: the model holds no decision (fit it, or calibrate a loaded one)."]
            return "\n".join(lines) + "\n"
        header = ["category", "threshold (raw image / pixel)", "source", "I-precision", "I-recall", "I-FPR", "I-F1",
                  "I-accuracy", "I TP/FP/TN/FN", "P-precision", "P-recall", "P-FPR", "P-F1"]
        where = self.config.get("thresholds") or "the model's stored decision"
        lines += ["", f"At the learned thresholds (normalised score 0.5; {where}, no test image; %):", "",
                  "| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(header) - 3)) + "|"]
        for row in [*self.rows, self.mean]:
            thresholds = ("-" if row.get("image_threshold") is None
                          else f"{row['image_threshold']:.4g} / {row['pixel_threshold']:.4g}")
            counts = "/".join("-" if row.get(f"I-{c}") is None else str(row[f"I-{c}"]) for c in COUNTS)
            cells = [str(row["category"]), thresholds, str(row.get("threshold_source") or "-")]
            cells += [_percent(row.get(f"I-{k}")) for k in RATES]
            cells.append(counts)
            cells += [_percent(row.get(f"P-{k}")) for k in RATES[:4]]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        """CSV with full-precision values (empty where undefined)."""
        keys = ["category", "images", "anomalous", *METRICS, "image_threshold", "pixel_threshold", "threshold_source",
                *DECISION_METRICS, "fit_seconds", "ms_per_image"]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in [*self.rows, self.mean]:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in keys})
        return buffer.getvalue()

    def images_csv(self) -> str:
        """One row per test image: category, path, defect, ground-truth label (0/1), raw score, score (normalised
        when decided), decision (OK/NG, empty without a learned threshold)."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=PER_IMAGE_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.images)
        return buffer.getvalue()

    def to_dict(self) -> dict[str, Any]:
        """``{"config", "categories": [rows], "mean"}``; JSON-able."""
        return {"config": self.config, "categories": self.rows, "mean": self.mean}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    def save(self, folder: str | os.PathLike) -> dict[str, Path]:
        """Write ``metrics.md``, ``metrics.csv``, ``metrics.json`` and ``per_image.csv`` into ``folder`` (each
        atomically)."""
        folder = Path(folder)
        paths = {"markdown": folder / "metrics.md", "csv": folder / "metrics.csv", "json": folder / "metrics.json",
                 "per_image": folder / "per_image.csv"}
        write_text(paths["markdown"], self.to_markdown())
        write_text(paths["csv"], self.to_csv())
        write_text(paths["json"], self.to_json())
        write_text(paths["per_image"], self.images_csv())
        return paths


def _percent(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def _synchronize(device: str | torch.device | None) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def predict_dataset(model: Any, dataset: AnomalyDataset, batch_size: int = 16, device: str | None = None,
                    progress: bool = False) -> tuple[CategoryPredictions, float]:
    """Run ``model.predict`` over ``dataset`` in order. Returns the predictions and the seconds spent in ``predict``.

    Maps of another size than the dataset's are resized bilinearly to it.
    """
    from tqdm.auto import tqdm

    scores, maps, masks, labels, paths, defects = [], [], [], [], [], []
    raw_scores, pred_labels, pred_masks = [], [], []
    elapsed = 0.0
    batches = dataset.batches(batch_size)
    if progress:
        batches = tqdm(batches, total=math.ceil(len(dataset) / batch_size), desc=f"predict {dataset.name}", leave=False)
    for batch in batches:
        _synchronize(device)
        start = time.perf_counter()
        result = model.predict(batch.image)
        _synchronize(device)
        elapsed += time.perf_counter() - start
        if not isinstance(result, AnomalyResult):
            raise TypeError(f"model.predict: expected an AnomalyResult, got {type(result).__name__}")
        result = decide(model, result)
        if len(result) != len(batch.image):
            raise ValueError(f"model.predict: returned {len(result)} results for {len(batch.image)} images")
        if tuple(result.anomaly_map.shape[-2:]) != tuple(batch.image.shape[-2:]):
            result = result.resized(tuple(batch.image.shape[-2:]))
        scores.append(result.pred_score.detach().float().cpu().reshape(-1).numpy())
        raw = result.raw_score if result.raw_score is not None else result.pred_score
        raw_scores.append(raw.detach().float().cpu().reshape(-1).numpy())
        if result.pred_label is not None and result.pred_mask is not None:
            pred_labels.append(result.pred_label.detach().cpu().reshape(-1).numpy().astype(bool))
            pred_masks.append(result.pred_mask.detach().cpu()[:, 0].numpy().astype(bool))
        raw_map = result.raw_map if result.raw_map is not None else result.anomaly_map
        maps.append(raw_map.detach().float().cpu()[:, 0].numpy())
        masks.append(batch.mask[:, 0].numpy() > 0.5)
        labels.append(batch.label.numpy().astype(bool))
        paths += list(batch.path)
        defects += list(batch.defect)
    decided = len(pred_labels) == len(scores)
    out = CategoryPredictions(np.concatenate(scores), np.concatenate(labels), np.concatenate(maps),
                              np.concatenate(masks), paths, defects, dataset.has_masks, np.concatenate(raw_scores),
                              np.concatenate(pred_labels) if decided else None,
                              np.concatenate(pred_masks) if decided else None,
                              getattr(model, "decision", None) if decided else None)
    return out, elapsed


def min_max_normalize(predictions: CategoryPredictions) -> CategoryPredictions:
    """Per-class min-max normalisation of maps and scores to [0, 1] (monotone: AUROC/AP/F1/PRO are unchanged)."""
    def scale(x: np.ndarray) -> np.ndarray:
        low, high = float(x.min()), float(x.max())
        return ((x - low) / (high - low) if high > low else np.zeros_like(x)).astype(np.float32)

    return dataclasses.replace(predictions, scores=scale(predictions.scores), maps=scale(predictions.maps))


def score_predictions(predictions: CategoryPredictions, pro: bool = True, flip_auroc: bool = False,
                      fpr_limit: float = 0.3, pro_thresholds: int | None = None) -> dict[str, float | None]:
    """The seven metrics for one category; ``None`` for those undefined (one class only, or no masks)."""
    out: dict[str, float | None] = dict.fromkeys(METRICS)
    if 0 < predictions.labels.sum() < predictions.labels.size:
        raw = predictions.scores if predictions.raw_scores is None else predictions.raw_scores
        out.update(metrics.image_metrics(raw, predictions.labels))
    if predictions.has_masks and 0 < predictions.masks.sum() < predictions.masks.size:
        out.update(metrics.pixel_metrics(predictions.maps, predictions.masks, pro, fpr_limit, pro_thresholds))
    if flip_auroc:
        for key in ("I-AUROC", "P-AUROC"):
            if out[key] is not None and out[key] < 0.5:
                out[key] = 1.0 - out[key]
    return out


def decision_metrics(predictions: CategoryPredictions) -> dict[str, Any]:
    """Precision, recall, FPR, F1, accuracy and confusion counts of the model's own OK/NG decisions, image level
    (``I-*``) and pixel level (``P-*``, where masks exist), with the thresholds and their source. All ``None``
    when the model made no decision."""
    out: dict[str, Any] = dict.fromkeys(("image_threshold", "pixel_threshold", "threshold_source")
                                        + DECISION_METRICS)
    if predictions.pred_labels is None:
        return out
    decision = predictions.decision
    if decision is not None:
        out.update(image_threshold=decision.image_threshold, pixel_threshold=decision.pixel_threshold,
                   threshold_source=decision.source)
    out.update({f"I-{k}": v for k, v in metrics.confusion_metrics(predictions.pred_labels, predictions.labels).items()})
    if predictions.has_masks:
        pixel = metrics.confusion_metrics(predictions.pred_masks, predictions.masks)
        out.update({f"P-{k}": v for k, v in pixel.items()})
    return out


def per_image_rows(name: str, predictions: CategoryPredictions) -> list[dict[str, Any]]:
    """The rows of ``per_image.csv`` for one category (see :meth:`EvaluationReport.images_csv`)."""
    rows = []
    for i, path in enumerate(predictions.paths):
        decision = "" if predictions.pred_labels is None else ("NG" if predictions.pred_labels[i] else "OK")
        rows.append({"category": name, "path": path, "defect": predictions.defects[i],
                     "label": int(predictions.labels[i]), "raw_score": float(predictions.raw_scores[i]),
                     "score": float(predictions.scores[i]), "decision": decision})
    return rows


def evaluate(model: Any, test: AnomalyDataset, train: AnomalyDataset | None = None, *,
             categories: Sequence[str] | None = None, unified: bool = False, batch_size: int = 16,
             normalize: bool = False, flip_auroc: bool = False, pro: bool = True, fpr_limit: float = 0.3,
             pro_thresholds: int | None = None, seed: int = 0, device: str | None = None,
             on_category: Callable[[str, CategoryPredictions], None] | None = None,
             progress: bool = False, holdout: float = HOLDOUT, sensitivity: float = DEFAULT_SENSITIVITY,
             calibration_anomalies: str | None = SYNTHETIC) -> EvaluationReport:
    """Evaluate ``model`` per category of ``test``.

    Args:
        model: an object with ``fit(dataset)`` and ``predict(images) -> AnomalyResult``.
        train: normal training images. ``None``: ``model`` is used as it is (already fitted or training-free; its
            ``decision``, if any, gives the OK/NG metrics). Otherwise, with ``unified=True`` one model is fitted on
            all categories at once; else a fresh copy of ``model`` (``copy.deepcopy`` of the unfitted object) is
            fitted per category; either way a ``holdout`` share of the training images (per category) is kept out
            of ``fit`` and the decision learned on it with ``sensitivity`` and ``calibration_anomalies``
            (``"synthetic"`` or ``None``, see :func:`ad_fast.calibration.calibrate`).
        categories: the categories to evaluate (default: all in ``test``).
        normalize: per-class min-max normalisation of maps and scores before scoring (changes no metric; kept for
            protocol parity and for the stored predictions).
        flip_auroc: report ``1 - AUROC`` when AUROC < 0.5 (a rule some papers apply; off by default).
        pro, fpr_limit, pro_thresholds: AUPRO settings (see :func:`ad_fast.metrics.aupro`).
        seed: seeds Python/NumPy/torch before each fit and prediction pass.
        on_category: called with each category's name and predictions once scored (e.g. to draw plots); the
            predictions are dropped afterwards, so memory holds one category at a time.
    """
    if not isinstance(test, AnomalyDataset):
        raise TypeError(f"test: expected an AnomalyDataset, got {type(test).__name__}")
    if train is not None and not isinstance(train, AnomalyDataset):
        raise TypeError(f"train: expected an AnomalyDataset or None, got {type(train).__name__}")
    names = list(categories) if categories is not None else test.categories
    unknown = [c for c in names if c not in test.categories]
    if unknown:
        raise ValueError(f"categories: {unknown} not in the test set ({test.categories})")
    config = {"test": test.name, "size": list(test.size) if test.size else None, "unified": unified,
              "batch_size": batch_size, "normalize": normalize, "flip_auroc": flip_auroc, "pro": pro,
              "fpr_limit": fpr_limit, "pro_thresholds": pro_thresholds, "seed": seed, "device": device,
              "model": type(model).__name__, "holdout": holdout if train is not None else None,
              "sensitivity": sensitivity if train is not None else None,
              "calibration_anomalies": calibration_anomalies if train is not None else None,
              "thresholds": ("learned at fit from the held-out normal training images" if train is not None
                             else "the model's stored decision")}
    fitted, fit_seconds = model, None
    fit = functools.partial(_fit, device=device, holdout=holdout, sensitivity=sensitivity, batch_size=batch_size,
                            anomalous=calibration_anomalies)
    if train is not None and unified:
        seed_everything(seed)
        fit_seconds = fit(fitted, train)
    report = EvaluationReport([], config)
    for name in names:
        category_fit_seconds = fit_seconds
        if train is not None and not unified:
            seed_everything(seed)
            fitted = copy.deepcopy(model)
            category_fit_seconds = fit(fitted, train.subset(category=name))
        seed_everything(seed)
        predictions, seconds = predict_dataset(fitted, test.subset(category=name), batch_size, device, progress)
        if normalize:
            predictions = min_max_normalize(predictions)
        row: dict[str, Any] = {"category": name, "images": int(predictions.labels.size),
                               "anomalous": int(predictions.labels.sum())}
        row.update(score_predictions(predictions, pro, flip_auroc, fpr_limit, pro_thresholds))
        row.update(decision_metrics(predictions))
        row["fit_seconds"] = category_fit_seconds
        row["ms_per_image"] = 1000.0 * seconds / predictions.labels.size
        report.rows.append(row)
        report.images += per_image_rows(name, predictions)
        if on_category is not None:
            on_category(name, predictions)
    return report


def fit_with_decision(model: Any, data: Any, validation: Any = None, holdout: float = HOLDOUT,
                      anomalous: Any = SYNTHETIC, sensitivity: float = DEFAULT_SENSITIVITY,
                      batch_size: int = 16, **fit_options: Any) -> Any:
    """Fit ``model`` (with the method's ``fit_options``) and learn its OK/NG decision on held-out normals (or
    ``validation``): a :class:`~ad_fast.models.Detector` through its own ``fit``, any other model through
    :func:`ad_fast.calibration.fit_and_calibrate`. Returns ``model``."""
    from .distributed.scoring import DataParallelScorer
    from .models.base import Detector

    if isinstance(model, DataParallelScorer):  # under torchrun: fit the model itself (its fit already calibrates)
        fit_with_decision(model.model, data, validation, holdout, anomalous, sensitivity, batch_size, **fit_options)
        return model
    if isinstance(model, Detector):
        return model.fit(data, validation=validation, holdout=holdout, calibration_anomalies=anomalous,
                         sensitivity=sensitivity, **fit_options)
    return fit_and_calibrate(model, data, validation, holdout, anomalous, sensitivity, batch_size, **fit_options)


def _fit(model: Any, dataset: AnomalyDataset, device: str | None, holdout: float, sensitivity: float,
         batch_size: int, anomalous: str | None) -> float:
    _synchronize(device)
    start = time.perf_counter()
    fit_with_decision(model, dataset, None, holdout, anomalous, sensitivity, batch_size)
    _synchronize(device)
    return time.perf_counter() - start
