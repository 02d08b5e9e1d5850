"""Atomic writes (ad_fast._io): umask permissions, fsync, no orphan temporary file after a failed or killed save."""

from __future__ import annotations

import os
import stat

import pytest

from ad_fast import _io
from isolated import run_isolated


@pytest.fixture
def umask_027():
    previous = os.umask(0o027)
    yield
    os.umask(previous)


def test_written_file_gets_the_umask_permissions(tmp_path, umask_027):
    target = tmp_path / "scores.json"
    _io.write_text(target, "{}")
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # 0666 & ~027; mkstemp alone gives 0600
    assert target.read_text() == "{}"


def test_failed_save_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "bank.safetensors"
    with pytest.raises(RuntimeError, match="boom"):
        with _io.atomic_path(target) as tmp:
            tmp.write_bytes(b"x" * 1000)
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_the_file_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real_fsync(fd))
    target = tmp_path / "model.safetensors"
    with _io.atomic_path(target) as tmp:
        tmp.write_bytes(b"data")
        temp_name = str(tmp)
    assert synced[0] == temp_name  # the data, under its temporary name
    assert str(tmp_path) in synced[1:]  # then the folder holding the rename


def test_a_killed_save_leaves_an_orphan_that_the_next_save_removes(tmp_path):
    target = tmp_path / "bank.safetensors"
    proc = run_isolated(f"""
        import os, signal
        from ad_fast._io import atomic_path
        with atomic_path({str(target)!r}) as tmp:
            tmp.write_bytes(b"x" * 4096)
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert proc.returncode == -9
    orphans = [p for p in tmp_path.iterdir() if p != target]
    assert len(orphans) == 1 and not target.exists()
    _io.write_text(target, "new")
    assert sorted(tmp_path.iterdir()) == [target] and target.read_text() == "new"


def test_a_live_writers_temporary_file_is_kept(tmp_path):
    target = tmp_path / "bank.safetensors"
    live = tmp_path / f".{target.name}.{os.getppid()}.abcd1234.tmp{target.suffix}"  # the parent process is alive
    live.write_bytes(b"in progress")
    other = tmp_path / f".other.safetensors.999999999.abcd1234.tmp.safetensors"  # another target's: not ours
    other.write_bytes(b"")
    _io.write_text(target, "new")
    assert live.exists() and other.exists()
