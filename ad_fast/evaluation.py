"""The evaluation protocol: fit (per category or unified), predict the test split, score per category and the mean.

A model is any object with ``fit(dataset)`` and ``predict(images) -> AnomalyResult`` (see ``ad_fast.models``).
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from . import metrics
from ._io import write_text
from .data.dataset import AnomalyDataset
from .results import AnomalyResult

IMAGE_METRICS = ("I-AUROC", "I-AP", "I-F1max")
PIXEL_METRICS = ("P-AUROC", "P-AP", "P-F1max", "AUPRO")
METRICS = IMAGE_METRICS + PIXEL_METRICS


@dataclass
class CategoryPredictions:
    """What a model predicted for one category's test images (``maps`` at the dataset's resolution).

    Attributes:
        scores (ndarray[N] float32), labels (ndarray[N] bool), maps (ndarray[N, H, W] float32),
        masks (ndarray[N, H, W] bool), paths (list[str]), defects (list[str]).
    """

    scores: np.ndarray
    labels: np.ndarray
    maps: np.ndarray
    masks: np.ndarray
    paths: list[str]
    defects: list[str]
    has_masks: bool = True


@dataclass
class EvaluationReport:
    """Per-category metric rows (values in [0, 1], ``None`` where undefined), their mean, and the settings."""

    rows: list[dict[str, Any]]
    config: dict[str, Any]

    @property
    def mean(self) -> dict[str, Any]:
        """The mean over categories of each metric (categories where it is undefined are left out) and timing."""
        out: dict[str, Any] = {"category": "mean"}
        for key in METRICS + ("fit_seconds", "ms_per_image"):
            values = [row[key] for row in self.rows if row.get(key) is not None]
            out[key] = float(np.mean(values)) if values else None
        out["images"] = sum(row["images"] for row in self.rows)
        out["anomalous"] = sum(row["anomalous"] for row in self.rows)
        return out

    def columns(self) -> list[str]:
        """Metric columns that have a value in at least one row."""
        return [key for key in METRICS if any(row.get(key) is not None for row in self.rows)]

    def to_markdown(self) -> str:
        """A Markdown table, metrics in percent with one decimal, one row per category plus the mean."""
        columns = self.columns()
        header = ["category", *columns, "ms/img"]
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
        for row in [*self.rows, self.mean]:
            cells = [str(row["category"])]
            cells += ["-" if row.get(k) is None else f"{100 * row[k]:.1f}" for k in columns]
            cells.append("-" if row.get("ms_per_image") is None else f"{row['ms_per_image']:.1f}")
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        """CSV with full-precision values (empty where undefined)."""
        keys = ["category", "images", "anomalous", *METRICS, "fit_seconds", "ms_per_image"]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in [*self.rows, self.mean]:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in keys})
        return buffer.getvalue()

    def to_dict(self) -> dict[str, Any]:
        """``{"config", "categories": [rows], "mean"}``; JSON-able."""
        return {"config": self.config, "categories": self.rows, "mean": self.mean}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    def save(self, folder: str | os.PathLike) -> dict[str, Path]:
        """Write ``metrics.md``, ``metrics.csv`` and ``metrics.json`` into ``folder`` (each atomically)."""
        folder = Path(folder)
        paths = {"markdown": folder / "metrics.md", "csv": folder / "metrics.csv", "json": folder / "metrics.json"}
        write_text(paths["markdown"], self.to_markdown())
        write_text(paths["csv"], self.to_csv())
        write_text(paths["json"], self.to_json())
        return paths


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
        if len(result) != len(batch.image):
            raise ValueError(f"model.predict: returned {len(result)} results for {len(batch.image)} images")
        if tuple(result.anomaly_map.shape[-2:]) != tuple(batch.image.shape[-2:]):
            result = result.resized(tuple(batch.image.shape[-2:]))
        scores.append(result.pred_score.detach().float().cpu().reshape(-1).numpy())
        maps.append(result.anomaly_map.detach().float().cpu()[:, 0].numpy())
        masks.append(batch.mask[:, 0].numpy() > 0.5)
        labels.append(batch.label.numpy().astype(bool))
        paths += list(batch.path)
        defects += list(batch.defect)
    out = CategoryPredictions(np.concatenate(scores), np.concatenate(labels), np.concatenate(maps),
                              np.concatenate(masks), paths, defects, dataset.has_masks)
    return out, elapsed


def min_max_normalize(predictions: CategoryPredictions) -> CategoryPredictions:
    """Per-class min-max normalisation of maps and scores to [0, 1] (monotone: AUROC/AP/F1/PRO are unchanged)."""
    def scale(x: np.ndarray) -> np.ndarray:
        low, high = float(x.min()), float(x.max())
        return ((x - low) / (high - low) if high > low else np.zeros_like(x)).astype(np.float32)

    return CategoryPredictions(scale(predictions.scores), predictions.labels, scale(predictions.maps),
                               predictions.masks, predictions.paths, predictions.defects, predictions.has_masks)


def score_predictions(predictions: CategoryPredictions, pro: bool = True, flip_auroc: bool = False,
                      fpr_limit: float = 0.3, pro_thresholds: int | None = None) -> dict[str, float | None]:
    """The seven metrics for one category; ``None`` for those undefined (one class only, or no masks)."""
    out: dict[str, float | None] = dict.fromkeys(METRICS)
    if 0 < predictions.labels.sum() < predictions.labels.size:
        out.update(metrics.image_metrics(predictions.scores, predictions.labels))
    if predictions.has_masks and 0 < predictions.masks.sum() < predictions.masks.size:
        out.update(metrics.pixel_metrics(predictions.maps, predictions.masks, pro, fpr_limit, pro_thresholds))
    if flip_auroc:
        for key in ("I-AUROC", "P-AUROC"):
            if out[key] is not None and out[key] < 0.5:
                out[key] = 1.0 - out[key]
    return out


def evaluate(model: Any, test: AnomalyDataset, train: AnomalyDataset | None = None, *,
             categories: Sequence[str] | None = None, unified: bool = False, batch_size: int = 16,
             normalize: bool = False, flip_auroc: bool = False, pro: bool = True, fpr_limit: float = 0.3,
             pro_thresholds: int | None = None, seed: int = 0, device: str | None = None,
             on_category: Callable[[str, CategoryPredictions], None] | None = None,
             progress: bool = False) -> EvaluationReport:
    """Evaluate ``model`` per category of ``test``.

    Args:
        model: an object with ``fit(dataset)`` and ``predict(images) -> AnomalyResult``.
        train: normal training images. ``None``: ``model`` is used as it is (already fitted or training-free).
            Otherwise, with ``unified=True`` one model is fitted on all categories at once; else a fresh copy of
            ``model`` (``copy.deepcopy`` of the unfitted object) is fitted per category.
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
              "model": type(model).__name__}
    fitted, fit_seconds = model, None
    if train is not None and unified:
        seed_everything(seed)
        fit_seconds = _fit(fitted, train, device)
    report = EvaluationReport([], config)
    for name in names:
        category_fit_seconds = fit_seconds
        if train is not None and not unified:
            seed_everything(seed)
            fitted = copy.deepcopy(model)
            category_fit_seconds = _fit(fitted, train.subset(category=name), device)
        seed_everything(seed)
        predictions, seconds = predict_dataset(fitted, test.subset(category=name), batch_size, device, progress)
        if normalize:
            predictions = min_max_normalize(predictions)
        row: dict[str, Any] = {"category": name, "images": int(predictions.labels.size),
                               "anomalous": int(predictions.labels.sum())}
        row.update(score_predictions(predictions, pro, flip_auroc, fpr_limit, pro_thresholds))
        row["fit_seconds"] = category_fit_seconds
        row["ms_per_image"] = 1000.0 * seconds / predictions.labels.size
        report.rows.append(row)
        if on_category is not None:
            on_category(name, predictions)
    return report


def _fit(model: Any, dataset: AnomalyDataset, device: str | None) -> float:
    _synchronize(device)
    start = time.perf_counter()
    model.fit(dataset)
    _synchronize(device)
    return time.perf_counter() - start
