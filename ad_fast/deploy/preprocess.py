"""Images -> the exported graph's input, in NumPy, exactly as the PyTorch models prepare them.

Decoding follows :func:`ad_fast.data.load_image` (RGB uint8; 16-bit grey scaled; alpha dropped), arrays follow
:func:`ad_fast.data.to_image_batch` (``[H, W]``, ``[H, W, 1|3|4]``, uint8 scaled by 1/255, float taken as [0, 1]).
Resizing reproduces ``torch.nn.functional.interpolate(mode="bilinear")`` — with or without ``antialias``, with
either ``align_corners`` — as two separable weight matrices built with PyTorch's own index and weight rules, so
the runtime feeds the graph the pixels PyTorch would (to float32 rounding, about 1e-7).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .metadata import Preprocess


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file as RGB ``uint8 [H, W, 3]`` (``FileNotFoundError`` / ``ValueError`` naming the path)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {str(path)!r}")
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode.startswith("I;16") or img.mode == "I":  # 16-bit grey: scale, PIL's convert would clip
                grey = np.asarray(img, dtype=np.float64) * (255.0 / 65535.0)
                return np.repeat(np.clip(grey, 0, 255).round().astype(np.uint8)[:, :, None], 3, axis=2)
            return np.array(img.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"cannot read image {str(path)!r}: {error}") from error


def _as_hwc(item: Any, name: str) -> np.ndarray:
    """One image (path, PIL image or array ``[H, W]`` / ``[H, W, C]``) as float32 ``[H, W, 3]`` in [0, 1]."""
    if isinstance(item, (str, os.PathLike)):
        item = load_image(item)
    elif not isinstance(item, np.ndarray):
        try:
            from PIL import Image
        except ImportError:  # pragma: no cover
            Image = None
        if Image is None or not isinstance(item, Image.Image):
            raise TypeError(f"{name}: expected a path, PIL image or NumPy array, got {type(item).__name__}")
        item = np.array(item.convert("RGB"))
    array = item[:, :, None] if item.ndim == 2 else item
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"{name}: expected an image array [H, W] or [H, W, C] with C in (1, 3, 4) channels, "
                         f"got shape {tuple(item.shape)}")
    if array.dtype != np.uint8 and not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"{name}: expected a uint8 or float array, got dtype {array.dtype}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name}: image has zero size {tuple(array.shape[:2])}")
    pixels = array[:, :, :3].astype(np.float32)
    if array.dtype == np.uint8:
        pixels /= np.float32(255.0)
    return np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels


def resize_weights(in_size: int, out_size: int, align_corners: bool, antialias: bool) -> np.ndarray:
    """``float32 [out_size, in_size]`` with ``W @ v`` = PyTorch's bilinear resize of a 1-D signal ``v``.

    Plain bilinear: source ``i·(in-1)/(out-1)`` (align_corners) or ``(i+0.5)·in/out - 0.5`` clamped at 0, two taps.
    Antialiased (PyTorch's separable AA kernel): a triangle of support ``max(in/out, 1)`` around ``(i+0.5)·in/out``,
    window bounds truncated to ints, weights normalised to sum 1. Positions and weights are computed in float32,
    as PyTorch's CPU kernels compute them for float32 images.
    """
    f32 = np.float32
    weights = np.zeros((out_size, in_size), dtype=f32)
    if antialias:
        scale = f32(in_size) / f32(out_size)
        support = f32(scale if scale >= 1 else 1.0)
        inv = f32(1.0) / scale if scale >= 1 else f32(1.0)
        for i in range(out_size):
            center = scale * f32(i + 0.5)
            lo = max(int(center - support + f32(0.5)), 0)
            hi = min(int(center + support + f32(0.5)), in_size)
            taps = np.maximum(f32(0), f32(1) - np.abs((np.arange(lo, hi, dtype=f32) - center + f32(0.5)) * inv))
            total = f32(0)
            for tap in taps:
                total = f32(total + tap)
            if total != 0:
                weights[i, lo:hi] = taps / total
        return weights
    if align_corners:
        scale = f32(in_size - 1) / f32(out_size - 1) if out_size > 1 else f32(0)
        sources = scale * np.arange(out_size, dtype=f32)
    else:
        scale = f32(in_size) / f32(out_size)
        sources = np.maximum(scale * (np.arange(out_size, dtype=f32) + f32(0.5)) - f32(0.5), f32(0))
    for i, src in enumerate(sources):
        left = min(int(src), in_size - 1)
        right = left + 1 if left < in_size - 1 else left
        frac = np.clip(src - f32(left), f32(0), f32(1))
        weights[i, left] += f32(1) - frac
        weights[i, right] += frac
    return weights


def resize(image: np.ndarray, size: tuple[int, int], align_corners: bool, antialias: bool) -> np.ndarray:
    """float32 ``[H, W, 3]`` -> ``[3, *size]`` (channel first), PyTorch's bilinear resize; no copy math when the
    size already matches (PyTorch's models skip the resize then too)."""
    chw = np.ascontiguousarray(image.transpose(2, 0, 1))
    if tuple(chw.shape[1:]) == tuple(size):
        return chw
    rows = resize_weights(chw.shape[1], size[0], align_corners, antialias)
    cols = resize_weights(chw.shape[2], size[1], align_corners, antialias)
    return np.einsum("oh,chw,pw->cop", rows, chw, cols, optimize=True).astype(np.float32)


def as_image_list(images: Any, name: str = "images") -> list:
    """A single image, a list of images or a 4-D array ``[B, H, W, C]`` -> a list of single images."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        items = list(images)
    elif isinstance(images, (list, tuple)):
        items = list(images)
    else:
        items = [images]
    if not items:
        raise ValueError(f"{name}: expected at least one image, got an empty input")
    return items


def prepare(images: Any, preprocess: Preprocess, name: str = "images") -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Images (paths, PIL images, arrays; one or a list) -> float32 ``[B, 3, H, W]`` at ``preprocess.size`` and the
    original ``(H, W)`` of each."""
    batch, sizes = [], []
    for i, item in enumerate(as_image_list(images, name)):
        hwc = _as_hwc(item, f"{name}[{i}]")
        sizes.append((int(hwc.shape[0]), int(hwc.shape[1])))
        chw = resize(hwc, preprocess.size, preprocess.align_corners, preprocess.antialias)
        batch.append(np.clip(chw, 0.0, 1.0) if preprocess.clamp else chw)
    return np.stack(batch).astype(np.float32, copy=False), sizes


def check_pixels(pixels: Any, preprocess: Preprocess, name: str) -> np.ndarray:
    """An already prepared batch: float32 ``[B, 3, H, W]`` at the graph's size, else ``ValueError`` naming it."""
    if not isinstance(pixels, np.ndarray):
        raise TypeError(f"{name}: expected a NumPy array, got {type(pixels).__name__}")
    expected = (3, *preprocess.size)
    if pixels.ndim != 4 or tuple(pixels.shape[1:]) != expected or pixels.shape[0] == 0:
        raise ValueError(f"{name}: expected an array [B, {expected[0]}, {expected[1]}, {expected[2]}] (B >= 1, RGB "
                         f"at the exported size), got shape {tuple(pixels.shape)}")
    if not np.issubdtype(pixels.dtype, np.floating):
        raise TypeError(f"{name}: expected float pixels in [0, 1], got dtype {pixels.dtype}")
    return np.ascontiguousarray(pixels, dtype=np.float32)


def batches(count: int, batch_size: int) -> Sequence[slice]:
    """Slices of ``range(count)`` of at most ``batch_size``."""
    return [slice(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]
