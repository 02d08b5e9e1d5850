"""Calibration: run a model on held-out images and learn its :class:`~ad_fast.decision.Decision`.

``fit_and_calibrate(model, data)`` holds a deterministic share of the normal images out of ``fit`` (or uses
``validation=`` images the caller gives) and calibrates on them, by default with one synthetic defect pasted into
each held-out image (anomalib's "synthetic validation": on the demo data the F1 threshold between held-out normals
and synthetic defects flagged no normal test image, where the normals-only quantile flagged most, because three
held-out images say little about the normals' upper tail); :func:`calibrate` does the second half alone, for
models that need no fit (MetaUAS with a prompt, release checkpoints loaded from disk). The threshold rules are in
:mod:`ad_fast.thresholds`. No test image is used anywhere.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from .data.dataset import AnomalyDataset
from .decision import Decision
from .results import AnomalyResult
from .thresholds import DEFAULT_SENSITIVITY, learn_decision

HOLDOUT = 0.2
"""Default share of the normal training images held out of ``fit`` for calibration."""
SYNTHETIC = "synthetic"
_SPLIT_SEED = 0


# --------------------------------------------------------------------------------------------- held-out split
def _holdout_indices(count: int, fraction: float, seed: int) -> list[int]:
    """``round(fraction · count)`` indices (at least 1, at most ``count - 1``; none when ``count < 2``) from a
    seeded permutation, sorted."""
    if count < 2:
        return []
    n = min(max(1, round(fraction * count)), count - 1)
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return sorted(int(i) for i in order[:n])


def _split_list(items: Sequence[Any], fraction: float, seed: int) -> tuple[list, list]:
    held = set(_holdout_indices(len(items), fraction, seed))
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


def split_normals(data: Any, fraction: float = HOLDOUT, seed: int = _SPLIT_SEED) -> tuple[Any, Any]:
    """Split normal training images into ``(fit_part, held_out)`` deterministically (a seeded permutation).

    Args:
        data: an :class:`~ad_fast.data.AnomalyDataset` (its normal records, split per category so each category
            keeps a calibration share), a mapping ``{class: images}`` (split per class), or any image input (a
            folder, a list, a tensor ``[B, 3, H, W]``).
        fraction: share held out, in (0, 1); at least one image on each side, none held out from fewer than two.

    Returns:
        ``fit_part`` of the same kind as ``data`` (a dataset, a mapping; a folder gives ``{folder name: images}``,
        anything else a list of images) and ``held_out``, a list of images (empty when nothing could be held
        out).
    """
    from .models.components.inputs import as_item_list

    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction < 1.0:
        raise ValueError(f"holdout: expected a fraction in (0, 1), got {fraction!r}")
    if isinstance(data, AnomalyDataset):
        fit_records, held = [], []
        for category in data.categories:
            kept, out = _split_list([r for r in data.records if r.category == category and r.label == 0],
                                    fraction, seed)
            fit_records += kept
            held += [str(r.image_path) for r in out]
        return AnomalyDataset(fit_records, data.size, f"{data.name}[fit]"), held
    if isinstance(data, Mapping):
        fit_part, held = {}, []
        for label, images in data.items():
            fit_part[label], out = _split_list(as_item_list(images, f"data[{label!r}]"), fraction, seed)
            held += out
        return fit_part, held
    fit_part, held = _split_list(as_item_list(data, "data"), fraction, seed)
    if isinstance(data, (str, os.PathLike)) and Path(data).is_dir():  # one class, named after its folder
        return {Path(data).name: fit_part}, held
    return fit_part, held


# ------------------------------------------------------------------------------------------------- raw outputs
def _image_items(data: Any) -> list:
    """Images of ``data`` as a list ``predict`` accepts (a dataset gives its normal images' paths)."""
    from .models.components.inputs import normal_images

    return [str(x) if isinstance(x, Path) else x for x in normal_images(data, "images")[0]]


def raw_outputs(model: Any, images: Sequence[Any], batch_size: int = 16,
                **predict_kwargs: Any) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The model's raw image scores ``Tensor[N]`` and raw maps (one ``Tensor[B, 1, H, W]`` per batch), ignoring any
    decision the model already holds."""
    scores, maps = [], []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            result = model.predict(images[start:start + batch_size], **predict_kwargs)
            if not isinstance(result, AnomalyResult):
                raise TypeError(f"model.predict: expected an AnomalyResult, got {type(result).__name__}")
            scores.append((result.raw_score if result.raw_score is not None else result.pred_score).float().cpu())
            maps.append((result.raw_map if result.raw_map is not None else result.anomaly_map).float().cpu())
    if not scores:
        raise ValueError("images: expected at least one calibration image")
    return torch.cat(scores), maps


def synthetic_anomalies(images: Sequence[Any], seed: int = _SPLIT_SEED,
                        size: tuple[int, int] | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """One DRAEM-style defect (:func:`ad_fast.synthesis.draem_paste`) pasted into each normal image:
    ``([3, H, W] images, [1, H, W] masks)``, reproducible from ``seed``. ``size`` (H, W): the images are first
    resized to it (the model's input size: a defect painted at a 900 px file's full resolution would cost ~12x
    the texture work only to be resized away by ``predict``)."""
    from .data.images import resize_image, to_image_batch
    from .synthesis import draem_paste

    tensors, _ = to_image_batch(list(images), "normal")
    if size is not None:
        tensors = [resize_image(t, size) for t in tensors]
    pairs = [draem_paste(image, seed + i) for i, image in enumerate(tensors)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _labelled(anomalous: Any) -> tuple[list, list]:
    """``(images, masks)`` of labelled anomalies: a pair, a dict with ``images``/``masks``, or a dataset."""
    if isinstance(anomalous, AnomalyDataset):
        records = [r for r in anomalous.records if r.label == 1]
        if not records or any(r.mask_path is None for r in records):
            raise ValueError("anomalous: the dataset needs anomalous images, each with a mask")
        return [str(r.image_path) for r in records], [str(r.mask_path) for r in records]
    if isinstance(anomalous, dict) and {"images", "masks"} <= set(anomalous):
        anomalous = (anomalous["images"], anomalous["masks"])
    if isinstance(anomalous, (tuple, list)) and len(anomalous) == 2:
        images, masks = _image_items(anomalous[0]), _image_items(anomalous[1])
        if len(images) != len(masks):
            raise ValueError(f"anomalous: expected one mask per image, got {len(images)} images, {len(masks)} masks")
        return images, masks
    raise TypeError("anomalous: expected None, 'synthetic', (images, masks), {'images', 'masks'} or a dataset")


def _mask_batch(masks: Sequence[Any], size: tuple[int, int]) -> torch.Tensor:
    """Masks (paths, arrays or tensors) as bool ``[B, 1, *size]`` (nearest resizing)."""
    from .data.images import read_mask

    out = []
    for mask in masks:
        tensor = read_mask(mask) if isinstance(mask, (str, os.PathLike)) else torch.as_tensor(mask).float()
        tensor = tensor.reshape(1, 1, *tensor.shape[-2:])
        out.append(F.interpolate(tensor, size=size, mode="nearest")[0] > 0.5)
    return torch.stack(out)


# ----------------------------------------------------------------------------------------------- calibration
def calibrate(model: Any, normal_images: Any, anomalous: Any = SYNTHETIC, sensitivity: float = DEFAULT_SENSITIVITY,
              batch_size: int = 16, seed: int = _SPLIT_SEED, synthetic_size: tuple[int, int] | None = None,
              **predict_kwargs: Any) -> Decision:
    """Learn ``model.decision`` from normal images the model was not fitted on (and optionally anomalies).

    Args:
        model: anything with ``predict(images, **predict_kwargs) -> AnomalyResult`` (e.g. a MetaUAS with
            ``prompt=...``, or a release checkpoint loaded from disk).
        normal_images: held-out normal images (a folder, a list, a tensor ``[N, 3, H, W]`` or a dataset).
        anomalous: ``"synthetic"`` (default: one DRAEM-style defect pasted into each normal image, anomalib's
            synthetic validation; F1-optimal thresholds), ``None`` (normals only: the quantile rule), or labelled
            anomalies ``(images, masks)`` / a dataset with masks (F1-optimal thresholds).
        sensitivity: in [0, 1] (see :mod:`ad_fast.thresholds`).
        synthetic_size: (H, W) the synthetic anomalies are made at (``None``: each image's own size);
            :meth:`ad_fast.Detector.fit` passes the model's ``input_size``.

    Returns:
        the :class:`Decision`, also stored as ``model.decision``.
    """
    normal = _image_items(normal_images)
    normal_scores, normal_maps = raw_outputs(model, normal, batch_size, **predict_kwargs)
    kwargs: dict[str, Any] = {}
    source = None
    if anomalous is not None:
        if isinstance(anomalous, str) and anomalous == SYNTHETIC:
            images, masks = synthetic_anomalies(normal, seed, synthetic_size)
            source = "f1-synthetic"
        else:
            images, masks = _labelled(anomalous)
        scores, maps = raw_outputs(model, images, batch_size, **predict_kwargs)
        mask_batches = [_mask_batch(masks[i:i + len(m)], tuple(m.shape[-2:]))
                        for i, m in zip(range(0, len(masks), batch_size), maps)]
        kwargs = {"anomalous_scores": scores, "anomalous_maps": [m.reshape(-1) for m in maps],
                  "anomalous_masks": [m.reshape(-1) for m in mask_batches]}
    decision = learn_decision(normal_scores, [m.reshape(-1) for m in normal_maps], sensitivity=sensitivity,
                              source=source, **kwargs)
    model.decision = decision
    return decision


def fit_and_calibrate(model: Any, data: Any, validation: Any = None, holdout: float = HOLDOUT,
                      anomalous: Any = SYNTHETIC, sensitivity: float = DEFAULT_SENSITIVITY,
                      calibration_batch_size: int = 16, fit: Callable[..., Any] | None = None,
                      synthetic_size: tuple[int, int] | None = None, **fit_kwargs: Any) -> Any:
    """Fit on the normal images minus a held-out share, then :func:`calibrate` on that share.

    :meth:`ad_fast.models.Detector.fit` runs this with its ``_fit``; for any other model ``fit`` defaults to
    ``model.fit`` (:func:`ad_fast.evaluation.fit_with_decision` picks the right one).

    Args:
        data: what ``model.fit`` takes (a dataset, a mapping, a folder, a list of images, a tensor).
        validation: normal images to calibrate on instead; then the model is fitted on all of ``data``.
        holdout: share of ``data`` held out when ``validation`` is ``None`` (deterministic, per category). With
            fewer than two normal images nothing is held out and no decision is learned (a warning says so).
        anomalous, sensitivity: as :func:`calibrate`; calibration_batch_size: its ``batch_size``.
        fit: the fitting function called with ``(fit_part, **fit_kwargs)``.
        synthetic_size: as :func:`calibrate`.

    Returns:
        ``model`` (fitted; ``model.decision`` set, or ``None`` when nothing could be held out).
    """
    fit = fit or model.fit
    model.decision = None
    if validation is None:
        data, validation = split_normals(data, holdout)
    fit(data, **fit_kwargs)
    if isinstance(validation, list) and not validation:
        warnings.warn("holdout: fewer than two normal images, none held out for calibration; the model makes no "
                      "OK/NG decision (give more images, or validation=, or calibrate it later)", stacklevel=2)
        return model
    calibrate(model, validation, anomalous, sensitivity, calibration_batch_size, synthetic_size=synthetic_size)
    return model


def decide(model: Any, result: AnomalyResult) -> AnomalyResult:
    """``result`` with ``model.decision`` applied if the model holds one and ``result`` is not decided yet."""
    decision = getattr(model, "decision", None)
    if decision is None or result.pred_label is not None and result.raw_score is not None:
        return result
    return decision.apply(result)


__all__ = ["HOLDOUT", "SYNTHETIC", "calibrate", "decide", "fit_and_calibrate", "raw_outputs", "split_normals",
           "synthetic_anomalies"]
