"""Atomic file writes: write beside the destination under a temporary name, then rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the destination's folder; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def staged_dir(destination: str | os.PathLike, beside: bool = True) -> Iterator[Path]:
    """Yield an empty staging folder; when the block succeeds, move its entries into ``destination`` (created if
    needed; same-named entries are replaced, folders merged). On failure the staging folder is deleted, so
    ``destination`` never holds half-written output.

    Args:
        beside: put the staging folder next to ``destination`` (else inside it, as a hidden folder).
    """
    import shutil

    destination = Path(destination)
    where = destination.parent if beside else destination
    where.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.staging.", dir=where))
    try:
        yield staging
        destination.mkdir(parents=True, exist_ok=True)
        for entry in staging.iterdir():
            _move_into(entry, destination / entry.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _move_into(source: Path, target: Path) -> None:
    import shutil

    if source.is_dir() and target.is_dir():
        for entry in source.iterdir():
            _move_into(entry, target / entry.name)
        return
    if target.is_dir():
        shutil.rmtree(target)
    os.replace(source, target)
