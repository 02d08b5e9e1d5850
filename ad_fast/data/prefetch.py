"""Image batches decoded and resized in a thread pool while the caller works on the previous batch.

PNG/JPEG decoding (PIL) and torch's resizing release the GIL, so a few threads keep the cores busy while the
backbone runs on the batch before. Order is preserved, at most ``prefetch`` batches wait ahead of the consumer
(bounded memory), and an error of any image surfaces, naming that image, when its batch is reached.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterator, NamedTuple, Sequence

import torch

from .images import ImageInput, _one_image, resize_image


class ImageBatch(NamedTuple):
    """One batch: ``start`` (index of its first image in the input), ``images`` (``Tensor[b, 3, H, W]`` when a
    size was given, else a list of ``[3, H_i, W_i]``), ``sizes`` (original ``(H_i, W_i)`` of each image)."""

    start: int
    images: torch.Tensor | list[torch.Tensor]
    sizes: list[tuple[int, int]]


def _default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _load(item: ImageInput, index: int, size: tuple[int, int] | None, name: str
          ) -> tuple[torch.Tensor, tuple[int, int]]:
    """Decode one image to float32 ``[3, H, W]`` in [0, 1], resized (bilinear, antialiased) to ``size``."""
    label = f"{name}[{index}]"
    try:
        image = _one_image(item, label)
    except Exception as error:  # noqa: BLE001 - the same exception, told which image it came from
        if isinstance(item, (str, os.PathLike)) and os.fspath(item) not in str(error):
            error.add_note(f"while reading {label} {os.fspath(item)!r}")
        raise
    original = (int(image.shape[1]), int(image.shape[2]))
    if size is not None:
        image = resize_image(image, size).clamp(0.0, 1.0)  # out of place: may be the caller's tensor
    return image, original


def prefetch_batches(items: Sequence[ImageInput], batch_size: int, size: tuple[int, int] | None = None,
                     name: str = "images", workers: int | None = None, prefetch: int = 2) -> Iterator[ImageBatch]:
    """Yield :class:`ImageBatch` es of ``items`` (paths, PIL images, arrays, tensors ``[C, H, W]``) in order.

    Each image is decoded (and resized to ``size``, then clamped to [0, 1]) by one of ``workers`` threads;
    up to ``prefetch`` batches beyond the one being consumed are in flight. Leaving the loop early cancels
    what is pending. The images are the same as decoding them one by one on the caller's thread.

    Args:
        items: the images, one per entry.
        batch_size: images per batch (the last one may be smaller).
        size: ``(H, W)`` to resize to, or None to keep each image's own size (``images`` is then a list).
        name: what error messages call the input (``name[i]`` plus the file name).
        workers: decoding threads (default: ``min(4, cpu_count)``); 0 decodes on the caller's thread.
        prefetch: batches decoded ahead of the consumer (>= 0).

    Raises:
        ValueError: a bad ``batch_size``, ``workers`` or ``prefetch``; plus whatever reading an image raises
        (FileNotFoundError, ValueError naming the file, TypeError for unsupported items), at that batch.
    """
    for arg, value, low in (("batch_size", batch_size, 1), ("prefetch", prefetch, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{arg}: expected an int >= {low}, got {value!r}")
    workers = _default_workers() if workers is None else workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers: expected an int >= 0, got {workers!r}")
    starts = range(0, len(items), batch_size)
    if workers == 0:
        for start in starts:
            loaded = [_load(items[i], i, size, name) for i in range(start, min(start + batch_size, len(items)))]
            yield _assemble(start, loaded, size)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ad_fast-prefetch") as pool:
        pending: list[tuple[int, list[Future]]] = []
        try:
            for start in starts:
                end = min(start + batch_size, len(items))
                pending.append((start, [pool.submit(_load, items[i], i, size, name) for i in range(start, end)]))
                if len(pending) > prefetch:
                    yield _collect(*pending.pop(0), size)
            while pending:
                yield _collect(*pending.pop(0), size)
        finally:
            for _, futures in pending:
                for future in futures:
                    future.cancel()


def _collect(start: int, futures: list[Future], size: tuple[int, int] | None) -> ImageBatch:
    return _assemble(start, [future.result() for future in futures], size)


def _assemble(start: int, loaded: list[tuple[torch.Tensor, tuple[int, int]]], size: tuple[int, int] | None
              ) -> ImageBatch:
    images = [image for image, _ in loaded]
    return ImageBatch(start, torch.stack(images) if size is not None else images, [s for _, s in loaded])
