"""User input (folders, paths, PIL images, arrays, tensors) -> lazily loaded, resized float batches."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from ...data.images import IMAGE_EXTENSIONS, ImageInput, is_image_file, resize_image, to_image_batch


def _folder_images(folder: Path, name: str) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if is_image_file(p))
    if not files:
        raise ValueError(f"{name}: folder {str(folder)!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def as_item_list(images: ImageInput | Sequence[ImageInput], name: str = "images") -> list:
    """Flatten ``images`` to a list of single images; folders expand to their image files (sorted, recursive).

    Raises:
        ValueError: empty input, or an empty folder.
        TypeError: an unsupported item type.
    """
    if isinstance(images, (torch.Tensor, np.ndarray)) and images.ndim == 4:
        items = list(images)
    elif isinstance(images, (list, tuple)):
        items = list(images)
    else:
        items = [images]
    flat: list = []
    for item in items:
        if isinstance(item, (str, os.PathLike)) and Path(item).is_dir():
            flat.extend(_folder_images(Path(item), name))
        elif isinstance(item, (list, tuple)):
            raise TypeError(f"{name}: expected images, got a nested {type(item).__name__}")
        else:
            flat.append(item)
    if not flat:
        raise ValueError(f"{name}: expected at least one image, got an empty input")
    return flat


def resize_batch(images: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Stack ``[3, H_i, W_i]`` images resized (bilinear, antialiased) to ``size`` -> ``Tensor[B, 3, *size]``."""
    out = [resize_image(img, size) for img in images]
    return torch.stack(out).clamp_(0.0, 1.0)


def iter_batches(items: list, size: tuple[int, int], batch_size: int, name: str = "images"
                 ) -> Iterator[tuple[int, torch.Tensor, list[tuple[int, int]]]]:
    """Yield ``(start, Tensor[b, 3, *size], original sizes)`` loading only ``batch_size`` images at a time."""
    for start in range(0, len(items), batch_size):
        chunk, sizes = to_image_batch(items[start : start + batch_size], name=name)
        yield start, resize_batch(chunk, size), sizes


def load_masks(masks: ImageInput | Sequence[ImageInput], count: int, size: tuple[int, int], name: str = "masks") -> torch.Tensor:
    """Binary masks ``Tensor[count, 1, *size]`` (pixel != 0 after a bilinear resize, as the candidate release)."""
    items = as_item_list(masks, name)
    if len(items) != count:
        raise ValueError(f"{name}: expected {count} masks (one per anomaly image), got {len(items)}")
    tensors, _ = to_image_batch(items, name=name)
    binary = [(t[:1] != 0).float() for t in tensors]
    resized = [resize_image(m, size, antialias=False) for m in binary]
    return (torch.stack(resized) != 0).float()
