"""What a detector accepts as images: one flat list of single images, and "the normal images of a dataset"."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ...data.images import ImageInput
from ...data.readers import IMAGE_EXTENSIONS, list_images


def as_item_list(images: ImageInput | Sequence[ImageInput], name: str = "images") -> list:
    """Flatten ``images`` to a list of single images (paths, PIL images, arrays ``[H, W(, C)]``, tensors
    ``[C, H, W]``); a batch ``[B, C, H, W]`` splits into B images and a folder expands to its image files (sorted,
    recursive, :func:`ad_fast.data.readers.list_images`).

    Raises:
        ValueError: empty input, or a folder without images.
        TypeError: a nested list.
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
            files = list_images(item, recursive=True)
            if not files:
                raise ValueError(f"{name}: folder {str(item)!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            flat.extend(files)
        elif isinstance(item, (list, tuple)):
            raise TypeError(f"{name}: expected images, got a nested {type(item).__name__}")
        else:
            flat.append(item)
    if not flat:
        raise ValueError(f"{name}: expected at least one image, got an empty input")
    return flat


def normal_images(data: Any, name: str = "data") -> tuple[list, list[str | None]]:
    """``(images, labels)``: the normal images of ``data`` and their class labels.

    ``data`` is an ``ad_fast.data`` dataset (its label-0 records' image paths, labelled by category), a mapping
    ``{class name: images}``, or any image input of :func:`as_item_list` (labels ``None``).

    Raises:
        ValueError: no normal image.
    """
    records = getattr(data, "records", None)
    if records is not None:
        normal = [r for r in records if r.label == 0]
        if not normal:
            raise ValueError(f"{name}: the dataset holds no normal (label 0) images")
        return [r.image_path for r in normal], [r.category for r in normal]
    if isinstance(data, Mapping):
        items, labels = [], []
        for label, images in data.items():
            group = as_item_list(images, f"{name}[{label!r}]")
            items += group
            labels += [str(label)] * len(group)
        if not items:
            raise ValueError(f"{name}: expected at least one image, got an empty mapping")
        return items, labels
    items = as_item_list(data, name)
    return items, [None] * len(items)
