"""Atomic file writes: write beside the destination under a temporary name, flush it to disk, then rename.

Files and folders made here get the permissions the user's umask gives a new file or folder (0644 / 0755 under the
usual umask 022), not the 0600 / 0700 of :mod:`tempfile`. A temporary file carries the writer's process id, so a
save killed half-way leaves an orphan that the next save of the same target removes.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator

_TEMP_MARK = ".tmp"


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask must set it to read it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path: str | os.PathLike) -> None:
    """Give ``path`` (a file or folder made by :mod:`tempfile`) the mode a plain ``open``/``mkdir`` would give it."""
    mode = 0o777 if os.path.isdir(path) else 0o666
    os.chmod(path, mode & ~_umask())


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def sweep_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that killed saves of ``path`` left beside it (their writer process is gone);
    return what was removed. Temporary files of a live writer are kept."""
    path = Path(path)
    pattern = re.compile(re.escape(_temp_prefix(path)) + r"(\d+)\.[^.]+" + re.escape(_TEMP_MARK + path.suffix) + "$")
    removed = []
    if not path.parent.is_dir():
        return removed
    for entry in path.parent.iterdir():
        match = pattern.match(entry.name)
        if match and int(match.group(1)) != os.getpid() and not _pid_alive(int(match.group(1))):
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                removed.append(entry)
    return removed


def _fsync(path: str | os.PathLike, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # e.g. a folder that cannot be opened (Windows)
        if directory:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on folders
        if not directory:
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the destination's folder; if the block succeeds, flush it to disk (fsync) and
    rename it onto ``path``, else delete it. Stale temporary files of earlier killed saves of ``path`` are removed
    first (:func:`sweep_stale_temps`). The file gets the umask's permissions."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(path)
    fd, tmp = tempfile.mkstemp(
        prefix=f"{_temp_prefix(path)}{os.getpid()}.", suffix=_TEMP_MARK + path.suffix, dir=path.parent
    )
    os.close(fd)
    try:
        apply_umask(tmp)
        yield Path(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent, directory=True)
    finally:
        with contextlib.suppress(FileNotFoundError):
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
