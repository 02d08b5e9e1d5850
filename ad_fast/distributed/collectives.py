"""Collectives over tensors of different lengths per rank (gather in rank order, block-wise map)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist

from .group import active, rank, world_size


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``tensor`` (same trailing shape and dtype, any length along dim 0) concatenated in rank order,
    on every rank. Without a process group: ``tensor`` itself."""
    if not active() or world_size() == 1:
        return tensor
    sizes = all_gather_sizes(tensor.shape[0], tensor.device)
    longest = max(sizes)
    padded = tensor.new_zeros((longest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])


def all_gather_sizes(size: int, device: torch.device | str = "cpu") -> list[int]:
    """Every rank's ``size``, in rank order."""
    if not active() or world_size() == 1:
        return [size]
    parts = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world_size())]
    dist.all_gather(parts, torch.tensor([size], dtype=torch.long, device=device))
    return [int(p) for p in parts]


def block_range(n: int) -> tuple[int, int]:
    """``[start, end)`` of this rank's contiguous block of ``n`` items (``tensor_split`` sizes: the first
    ``n % world`` ranks hold one more)."""
    world, r = world_size(), rank()
    base, extra = divmod(n, world)
    start = r * base + min(r, extra)
    return start, start + base + (r < extra)


def map_blocks(fn: Callable[[torch.Tensor], torch.Tensor], tensor: torch.Tensor) -> torch.Tensor:
    """``fn(tensor)`` computed block-wise: each rank applies ``fn`` (row-wise, output rows = input rows) to its
    contiguous block of ``tensor``'s rows, and every rank gets all blocks' outputs in order. ``tensor`` must be
    the same on every rank. Without a process group: ``fn(tensor)``."""
    if not active() or world_size() == 1:
        return fn(tensor)
    start, end = block_range(tensor.shape[0])
    return all_gather_cat(fn(tensor[start:end]))
