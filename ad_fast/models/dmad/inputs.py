"""Image lists (see :func:`ad_fast.models.components.inputs.as_item_list`) -> lazily loaded, resized float batches."""

from __future__ import annotations

from typing import Iterator, Sequence

import torch

from ...data.images import ImageInput, resize_image, to_image_batch
from ..components.inputs import as_item_list


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
