"""Pictures of predictions: anomaly-map overlays, a per-category grid, ROC/PR plots (matplotlib, no GUI backend).

For an inspector, decided predictions are drawn on one shared scale: normalised maps in [0, 1] (the learned
threshold at 0.5, see :class:`ad_fast.decision.Decision`), a colour bar, each picture captioned with its score and
OK/NG, and the predicted defect outlined at the learned pixel threshold.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from . import metrics
from ._io import atomic_path

PRED_CONTOUR = (255, 255, 255)
GT_CONTOUR = (0, 255, 0)
_BAR_WIDTH = 12
_TEXT_HEIGHT = 12


def _numpy(x: Any) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _hwc_uint8(image: Any) -> np.ndarray:
    """``[3, H, W]`` float in [0, 1] (tensor or array) or ``[H, W, 3]`` uint8 → ``[H, W, 3]`` uint8."""
    array = _numpy(image)
    channels_first = array.ndim == 3 and array.shape[0] in (1, 3)
    if channels_first and (array.shape[-1] not in (1, 3) or array.dtype != np.uint8):
        array = array.transpose(1, 2, 0)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    if array.dtype != np.uint8:
        array = (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
    return array


def _plane(x: Any, name: str) -> np.ndarray:
    array = _numpy(x)
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise ValueError(f"{name}: expected [H, W] or [1, H, W], got shape {array.shape}")
    return array


def colorize(anomaly_map: Any, vmin: float | None = None, vmax: float | None = None,
             cmap: str = "jet") -> np.ndarray:
    """Map ``[H, W]`` scores to RGB ``[H, W, 3]`` uint8 through ``cmap``; range [vmin, vmax] (default: the map's)."""
    from matplotlib import colormaps

    values = _plane(anomaly_map, "anomaly_map").astype(np.float64)
    low = float(values.min()) if vmin is None else vmin
    high = float(values.max()) if vmax is None else vmax
    scaled = np.clip((values - low) / (high - low), 0, 1) if high > low else np.zeros_like(values)
    return (colormaps[cmap](scaled)[..., :3] * 255).round().astype(np.uint8)


def _boundary(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def overlay(image: Any, anomaly_map: Any, pred_mask: Any = None, gt_mask: Any = None, alpha: float = 0.5,
            vmin: float | None = None, vmax: float | None = None, cmap: str = "jet") -> np.ndarray:
    """Blend the coloured anomaly map over the image and draw mask contours.

    Args:
        image: ``[3, H, W]`` float in [0, 1] or ``[H, W, 3]`` uint8.
        anomaly_map: ``[H, W]`` or ``[1, H, W]``, same H, W as the image.
        pred_mask: predicted mask (bool-like), outlined in white; ``gt_mask``: ground truth, outlined in green.

    Returns:
        ndarray[H, W, 3] uint8.
    """
    rgb = _hwc_uint8(image)
    heat = colorize(anomaly_map, vmin, vmax, cmap)
    if heat.shape[:2] != rgb.shape[:2]:
        raise ValueError(f"anomaly_map: size {heat.shape[:2]} differs from the image's {rgb.shape[:2]}")
    out = ((1 - alpha) * rgb + alpha * heat).round().astype(np.uint8)
    for mask, colour in ((gt_mask, GT_CONTOUR), (pred_mask, PRED_CONTOUR)):
        if mask is not None:
            out[_boundary(_plane(mask, "mask") > 0.5)] = colour
    return out


def caption(name: str, score: float, label: bool | None) -> str:
    """``"scratch_003  0.83 NG"``: a picture's name, its score and its OK/NG decision (omitted when undecided)."""
    return f"{name}  {score:.2f}" + ("" if label is None else (" NG" if label else " OK"))


def annotate(picture: np.ndarray, text: str, vmin: float, vmax: float, cmap: str = "jet",
             footer: str | None = None) -> np.ndarray:
    """``picture`` ``[H, W, 3]`` uint8 with ``text`` in a band above it, a colour bar for [vmin, vmax] on its right
    (ticks at both ends and the middle) and an optional ``footer`` line below (e.g. which threshold is drawn)."""
    from matplotlib import colormaps
    from PIL import Image, ImageDraw

    height, width = picture.shape[:2]
    ticks = [f"{v:.3g}" for v in (vmax, (vmin + vmax) / 2, vmin)]
    draw_probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    tick_width = max(int(draw_probe.textlength(t)) for t in ticks) + 4
    rows = 2 + (footer is not None)
    canvas = Image.new("RGB", (width + _BAR_WIDTH + tick_width + 4, height + rows * _TEXT_HEIGHT), "white")
    canvas.paste(Image.fromarray(picture), (0, _TEXT_HEIGHT))
    ramp = np.linspace(1.0, 0.0, height)[:, None].repeat(_BAR_WIDTH, 1)
    bar = (colormaps[cmap](ramp)[..., :3] * 255).round().astype(np.uint8)
    canvas.paste(Image.fromarray(bar), (width + 2, _TEXT_HEIGHT))
    draw = ImageDraw.Draw(canvas)
    draw.text((1, 0), text, fill="black")
    for tick, y in zip(ticks, (0, height // 2, height - _TEXT_HEIGHT)):
        draw.text((width + _BAR_WIDTH + 4, _TEXT_HEIGHT + y), tick, fill="black")
    if footer is not None:
        draw.text((1, height + _TEXT_HEIGHT), footer, fill="black")
    return np.asarray(canvas)


def save_overlay(path: str | os.PathLike, image: Any, anomaly_map: Any, *, text: str | None = None,
                 footer: str | None = None, **kwargs: Any) -> Path:
    """Write :func:`overlay` as a PNG (atomically); returns the path. With ``text``, the picture is
    :func:`annotate`-d (caption, colour bar over ``vmin``..``vmax``, or the map's range, and ``footer``)."""
    from PIL import Image

    picture = overlay(image, anomaly_map, **kwargs)
    if text is not None:
        plane = _plane(anomaly_map, "anomaly_map")
        vmin = float(plane.min()) if kwargs.get("vmin") is None else kwargs["vmin"]
        vmax = float(plane.max()) if kwargs.get("vmax") is None else kwargs["vmax"]
        picture = annotate(picture, text, vmin, vmax, kwargs.get("cmap", "jet"), footer)
    with atomic_path(path) as tmp:
        Image.fromarray(picture).save(tmp, format="PNG")
    return Path(path)


def _save_figure(figure: Any, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    return Path(path)


def category_grid(path: str | os.PathLike, images: Sequence[Any], maps: Sequence[Any],
                  gt_masks: Sequence[Any] | None = None, titles: Sequence[str] | None = None,
                  vmin: float | None = None, vmax: float | None = None, threshold: float | None = None,
                  note: str | None = None, cmap: str = "jet") -> Path:
    """A PNG with one column per image: the image (ground truth outlined in green), then the overlay (prediction
    ``map >= threshold`` outlined in white), a colour bar, and ``note`` (e.g. where the threshold came from) as the
    figure title. Maps share one colour range (default: min/max over all of them)."""
    from matplotlib import cm, colors
    from matplotlib.figure import Figure

    if not len(images) or len(images) != len(maps):
        raise ValueError(f"images and maps: expected equal, non-zero lengths, got {len(images)} and {len(maps)}")
    planes = [_plane(m, "maps") for m in maps]
    vmin = min(float(p.min()) for p in planes) if vmin is None else vmin
    vmax = max(float(p.max()) for p in planes) if vmax is None else vmax
    n = len(images)
    figure = Figure(figsize=(2.0 * n, 4.2))
    axes = figure.subplots(2, n, squeeze=False)
    for i in range(n):
        gt = None if gt_masks is None else gt_masks[i]
        pred = None if threshold is None else planes[i] >= threshold
        axes[0, i].imshow(overlay(images[i], planes[i], gt_mask=gt, alpha=0.0, vmin=vmin, vmax=vmax))
        axes[1, i].imshow(overlay(images[i], planes[i], pred_mask=pred, vmin=vmin, vmax=vmax, cmap=cmap))
        if titles is not None:
            axes[0, i].set_title(titles[i], fontsize=8)
        for ax in axes[:, i]:
            ax.set_axis_off()
    scale = cm.ScalarMappable(norm=colors.Normalize(vmin, vmax), cmap=cmap)
    figure.colorbar(scale, ax=axes[1, :].tolist(), fraction=0.05, pad=0.02)
    if note:
        figure.suptitle(note, fontsize=8)
    return _save_figure(figure, path)


def plot_roc_pr(path: str | os.PathLike, scores: Any, labels: Any, title: str = "") -> Path:
    """ROC and precision-recall curves side by side, AUROC/AP in the legends (PNG)."""
    from matplotlib.figure import Figure

    curve = metrics.curves(scores, labels)
    summary = metrics.binary_metrics(scores, labels)
    figure = Figure(figsize=(8, 3.6))
    roc, pr = figure.subplots(1, 2)
    roc.plot(curve["fpr"], curve["tpr"], label=f"AUROC {100 * summary['auroc']:.1f}")
    roc.plot([0, 1], [0, 1], color="grey", linestyle=":")
    roc.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.02), title="ROC")
    pr.plot(curve["recall"], curve["precision"], label=f"AP {100 * summary['ap']:.1f}")
    pr.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="precision-recall")
    for ax in (roc, pr):
        ax.legend(loc="lower right" if ax is roc else "lower left")
    if title:
        figure.suptitle(title)
    return _save_figure(figure, path)
