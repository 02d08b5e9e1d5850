"""MemoryBank persistence: save → load(mmap=True) searches straight from the file, like the in-memory bank."""

from __future__ import annotations

import hashlib

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from ad_fast._extension import has_ops
from ad_fast.checkpoints import read_safetensors
from ad_fast.ops import MemoryBank, knn
from mapping import mapped_file, needs_proc_maps

BACKENDS = ["reference", pytest.param("kernel", marks=pytest.mark.skipif(not has_ops(), reason="ad_fast._C not built"))]
DTYPES = [torch.float32, torch.float16]


def _saved_bank(tmp_path, dtype=torch.float32, metric="l2", n=3000, dim=24):
    gen = torch.Generator().manual_seed(3)
    bank = MemoryBank(dim, dtype=dtype, metric=metric).add(torch.randn(n, dim, generator=gen))
    path = tmp_path / "bank.safetensors"
    bank.save(path)
    return bank, path


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@needs_proc_maps
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_mmap_load_is_file_backed_and_searches_like_the_in_memory_bank(tmp_path, dtype, metric, backend):
    bank, path = _saved_bank(tmp_path, dtype, metric)
    mapped = MemoryBank.load(path, mmap=True)
    assert mapped_file(mapped.rows) == mapped_file(mapped.sq_norms) == str(path.resolve())
    assert not mapped.rows.untyped_storage().resizable()
    assert mapped.rows.dtype == dtype and mapped.metric == metric and len(mapped) == len(bank)
    assert torch.equal(mapped.rows, bank.rows) and torch.equal(mapped.sq_norms, bank.sq_norms)
    query = torch.randn(300, 24, generator=torch.Generator().manual_seed(4))
    expected = knn(query, bank.rows, 5, metric, bank_sq_norms=bank.sq_norms, backend=backend)
    got = knn(query, mapped.rows, 5, metric, bank_sq_norms=mapped.sq_norms, backend=backend)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert torch.equal(mapped.search(query, k=5)[1], bank.search(query, k=5)[1])
    assert mapped_file(mapped.rows) == str(path.resolve())  # searching left the bank in the file


@needs_proc_maps
def test_load_without_mmap_reads_into_memory(tmp_path):
    bank, path = _saved_bank(tmp_path)
    loaded = MemoryBank.load(path)
    assert mapped_file(loaded.rows) is None and mapped_file(loaded.sq_norms) is None
    assert torch.equal(loaded.rows, bank.rows)


@pytest.mark.skipif(not has_ops(), reason="ad_fast._C not built")
@pytest.mark.parametrize("dtype", DTYPES)
def test_kernel_search_allocates_no_copy_of_the_mapped_bank(tmp_path, dtype):
    """Every allocation of one CPU kernel search stays far below the bank's size (rows are converted chunk by chunk)."""
    _, path = _saved_bank(tmp_path, dtype, n=20000, dim=64)
    mapped = MemoryBank.load(path, mmap=True)
    query = torch.randn(300, 64)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        mapped.search(query, k=5)
    largest = max(event.cpu_memory_usage for event in prof.events())
    assert 0 < largest < mapped.rows.nbytes // 4, (largest, mapped.rows.nbytes)


@needs_proc_maps
def test_mapped_bank_never_writes_its_file_and_add_copies(tmp_path):
    bank, path = _saved_bank(tmp_path)
    digest = _digest(path)
    mapped = MemoryBank.load(path, mmap=True)
    mapped.rows[0] = 0.0  # copy-on-write: this process only
    assert _digest(path) == digest
    extra = torch.randn(5, 24)
    mapped.add(extra)
    assert len(mapped) == len(bank) + 5 and mapped_file(mapped.rows) is None and mapped_file(mapped.sq_norms) is None
    assert torch.equal(mapped.rows[-5:], extra) and torch.equal(mapped.rows[1:-5], bank.rows[1:])
    assert _digest(path) == digest
    assert torch.equal(MemoryBank.load(path, mmap=True).rows, bank.rows)


def test_save_over_the_mapped_file_keeps_the_mapped_bank_intact(tmp_path):
    bank, path = _saved_bank(tmp_path)
    mapped = MemoryBank.load(path, mmap=True)
    MemoryBank(24).add(torch.zeros(7, 24)).save(path)  # renamed onto path: the old file lives on for the map
    assert torch.equal(mapped.rows, bank.rows)
    assert len(MemoryBank.load(path, mmap=True)) == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank.safetensors"]


def test_from_rows_wraps_without_copy_and_checks(tmp_path):
    rows = torch.randn(10, 4, dtype=torch.float16)
    bank = MemoryBank.from_rows(rows, "cosine")
    assert bank.rows is rows and bank.dtype == torch.float16 and bank.metric == "cosine"
    assert torch.equal(bank.sq_norms, MemoryBank(4, torch.float16).add(rows).sq_norms)
    with pytest.raises(ValueError, match="sq_norms"):
        MemoryBank.from_rows(rows, sq_norms=torch.zeros(9))
    with pytest.raises(TypeError, match="sq_norms"):
        MemoryBank.from_rows(rows, sq_norms=torch.zeros(10, dtype=torch.float64))
    with pytest.raises(ValueError, match="rows"):
        MemoryBank.from_rows(torch.zeros(10))


@pytest.mark.parametrize("mmap", [False, True])
def test_truncated_or_corrupt_files_raise_naming_the_path(tmp_path, mmap):
    _, path = _saved_bank(tmp_path)
    data = path.read_bytes()
    for name, content in [("short.safetensors", data[:-4]), ("header.safetensors", data[:20]),
                          ("garbage.safetensors", b"\x10" * 64)]:
        bad = tmp_path / name
        bad.write_bytes(content)
        with pytest.raises(ValueError, match=f"path: '{bad}'"):
            MemoryBank.load(bad, mmap=mmap)
    with pytest.raises(FileNotFoundError, match="missing"):
        MemoryBank.load(tmp_path / "missing.safetensors", mmap=mmap)


def test_misaligned_tensor_cannot_be_mapped(tmp_path):
    """A hand-made file whose float32 data starts at an odd byte: readable, but not mappable."""
    header = b'{"rows":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}} '
    path = tmp_path / "odd.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + torch.arange(4.0).numpy().tobytes())
    assert torch.equal(read_safetensors(path)[1]["rows"], torch.arange(4.0).reshape(2, 2))
    with pytest.raises(ValueError, match=f"cannot be memory-mapped: it starts at byte {8 + len(header)}"):
        read_safetensors(path, mmap=True)
