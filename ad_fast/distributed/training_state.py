"""Training checkpoints (resumable state of a trainer): written atomically by rank 0, read with weights_only."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_path
from .group import is_main


def save_training_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """``torch.save(state)`` to ``path`` through a temporary file renamed onto it; only rank 0 writes."""
    if not is_main():
        return
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_training_state(path: str | os.PathLike, what: str = "training checkpoint") -> dict[str, Any]:
    """The dict saved by :func:`save_training_state` (``weights_only=True``: plain tensors and containers only).

    Raises:
        ValueError: the file is unreadable or holds no dict (the message names ``path`` and ``what``).
    """
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 (any unreadable file is reported the same way)
        raise ValueError(f"{str(path)!r} is not a readable {what}: {error}") from error
    if not isinstance(state, dict):
        raise ValueError(f"{str(path)!r} is not a {what} (no dict inside)")
    return state
