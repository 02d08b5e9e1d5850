"""Models with sharded memory banks (DMAD): shard after fitting or loading, save as one ordinary model file."""

from __future__ import annotations

import os
from typing import Any

import torch.distributed as dist

from ..ops import MemoryBank
from .group import active, is_main, world_size
from .sharded_bank import ShardedMemoryBank


def shard_banks(model: Any, copy: bool = True) -> Any:
    """Replace every :class:`~ad_fast.ops.MemoryBank` attribute of ``model`` (DMAD: ``normal_bank``,
    ``abnormal_bank``) by this rank's block of it (:meth:`ShardedMemoryBank.from_bank`); returns ``model``.

    Args:
        copy: copy the block out of the bank so the rest can be freed (``False`` keeps a view, for memory-mapped
            banks, where only the block's pages are ever read).
    """
    for name, value in list(vars(model).items()):
        if isinstance(value, MemoryBank):
            setattr(model, name, ShardedMemoryBank.from_bank(value, copy=copy))
    return model


def save_sharded(model: Any, path: str | os.PathLike, **save_kwargs: Any) -> None:
    """``model.save(path)`` of a model with sharded banks: the same single file an unsharded model writes, loadable
    at any world size. The banks are gathered (every rank briefly holds them whole), rank 0 writes. A collective."""
    sharded = {name: value for name, value in vars(model).items() if isinstance(value, ShardedMemoryBank)}
    whole = {name: bank.gather() for name, bank in sharded.items()}
    try:
        for name, bank in whole.items():
            setattr(model, name, bank)
        if is_main():
            model.save(path, **save_kwargs)
    finally:
        for name, bank in sharded.items():
            setattr(model, name, bank)
    if active() and world_size() > 1:
        dist.barrier()  # the file is complete before any rank goes on (e.g. to load it)


def load_sharded(path: str | os.PathLike, mmap: bool = True, **load_kwargs: Any) -> Any:
    """Load a saved model (:func:`ad_fast.load_model`) and shard its banks over the current ranks, whatever the
    world size it was fitted or saved at. With ``mmap`` each rank maps the file and reads only its block."""
    from ..models import load_model

    return shard_banks(load_model(path, mmap=mmap, **load_kwargs), copy=not mmap)
