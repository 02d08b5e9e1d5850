"""Image lists (see :func:`ad_fast.models.components.inputs.as_item_list`) -> lazily loaded, resized float batches."""

from __future__ import annotations

from typing import Iterator, Sequence

import torch

from ...data.images import ImageInput, resize_image, to_image_batch
from ...data.prefetch import prefetch_batches
from ..components.inputs import as_item_list


def iter_batches(items: list, size: tuple[int, int], batch_size: int, name: str = "images"
                 ) -> Iterator[tuple[int, torch.Tensor, list[tuple[int, int]]]]:
    """Yield ``(start, Tensor[b, 3, *size], original sizes)``; the next batches are decoded and resized in
    background threads while the caller works on this one (:func:`ad_fast.data.prefetch.prefetch_batches`)."""
    yield from prefetch_batches(items, batch_size, size, name)


def load_masks(masks: ImageInput | Sequence[ImageInput], count: int, size: tuple[int, int], name: str = "masks") -> torch.Tensor:
    """Binary masks ``Tensor[count, 1, *size]`` (pixel != 0 after a bilinear resize, as the candidate release)."""
    items = as_item_list(masks, name)
    if len(items) != count:
        raise ValueError(f"{name}: expected {count} masks (one per anomaly image), got {len(items)}")
    tensors, _ = to_image_batch(items, name=name)
    binary = [(t[:1] != 0).float() for t in tensors]
    resized = [resize_image(m, size, antialias=False) for m in binary]
    return (torch.stack(resized) != 0).float()
