"""A growable bank of feature rows with precomputed norms, searched with :func:`ad_fast.ops.knn`."""

from __future__ import annotations

import json
import os

import torch

from ._validate import check_choice, check_same_device, check_tensor
from .knn import BANK_STORAGE_DTYPES, METRICS, knn
from .pruned_knn import ProjectionIndex, build_projection_index, knn_pruned, pruning_pays

FORMAT_VERSION = 1
_STORAGE_DTYPES = (torch.float32, torch.float64, *BANK_STORAGE_DTYPES)
_DTYPE_NAMES = {str(d).replace("torch.", ""): d for d in _STORAGE_DTYPES}
_NORM_CHUNK_ELEMENTS = 1 << 22  # squared norms are computed through float32 chunks of at most 16 MiB


def sq_norms_digest(sq_norms: torch.Tensor) -> str:
    """SHA-256 (hex) of the float32 bytes of ``sq_norms`` (Tensor[N]): stored beside saved norms so a load can
    verify them by reading ``4 N`` bytes instead of every row."""
    import hashlib

    return hashlib.sha256(sq_norms.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def verified_sq_norms(
    rows: torch.Tensor, sq_norms: torch.Tensor | None, digest: str | None, source: str, mmap: bool
) -> torch.Tensor:
    """Squared norms to search ``rows`` (Tensor[N, D]) with, as loaded from ``source`` (e.g. ``"path: 'x'"``).

    Stored norms are never trusted blindly: a bank read into memory (``mmap=False``) recomputes them from its rows
    (one pass, so rows and norms always agree); a memory-mapped bank keeps the stored ones only when their
    SHA-256 matches ``digest`` (written by the save), otherwise (old files: no digest) recomputes them.

    Raises:
        ValueError: the stored norms do not match their digest (the message starts with ``source``).
    """
    if not mmap or sq_norms is None or digest is None:
        return _sq_norms(rows)
    if sq_norms_digest(sq_norms) != digest:
        raise ValueError(f"{source} is corrupt: its stored squared norms do not match their checksum")
    return sq_norms


def _sq_norms(rows: torch.Tensor) -> torch.Tensor:
    """Squared norms (Tensor[N] float32) of ``rows`` (Tensor[N, D]), upcast chunk by chunk, never whole."""
    chunk = max(1, _NORM_CHUNK_ELEMENTS // max(1, rows.shape[1]))
    return torch.cat([part.to(torch.float32).pow(2).sum(1) for part in rows.split(chunk)])


class MemoryBank:
    """Rows ``[N, D]`` kept in ``dtype`` (float16/bfloat16 halve the memory; searches compute in float32),
    with their squared norms ``[N]`` (float32, from the stored rows) computed once at :meth:`add`.

    A bank loaded with ``mmap=True`` searches straight from a private memory map of its file and is read-only
    towards it: the file is never written, and :meth:`add` first copies the bank into memory.

    Example::

        bank = MemoryBank(dim=1536, dtype=torch.float16)
        bank.add(train_patches)                       # [N, 1536]
        dist, idx = bank.search(test_patches, k=9)    # [M, 9] each
        bank.save("bank.safetensors"); bank = MemoryBank.load("bank.safetensors", mmap=True)
    """

    def __init__(
        self, dim: int, dtype: torch.dtype = torch.float32, metric: str = "l2", device: torch.device | str = "cpu"
    ):
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim: expected a positive int, got {dim!r}")
        if dtype not in _STORAGE_DTYPES:
            raise TypeError(f"dtype: expected one of {_STORAGE_DTYPES}, got {dtype!r}")
        self.dim = dim
        self.dtype = dtype
        self.metric = check_choice(metric, "metric", METRICS)
        self.rows = torch.empty(0, dim, dtype=dtype, device=device)
        self.sq_norms = torch.empty(0, dtype=torch.float32, device=device)

    def __len__(self) -> int:
        return self.rows.shape[0]

    def __repr__(self) -> str:
        return (
            f"MemoryBank(rows={len(self)}, dim={self.dim}, dtype={self.dtype}, metric={self.metric!r}, "
            f"device={self.device})"
        )

    @property
    def device(self) -> torch.device:
        return self.rows.device

    @classmethod
    def from_rows(cls, rows: torch.Tensor, metric: str = "l2", sq_norms: torch.Tensor | None = None) -> MemoryBank:
        """A bank over ``rows`` as they are, without a copy (a memory-mapped tensor stays mapped).

        Args:
            rows (Tensor[N, D]): float32/float64/float16/bfloat16; its dtype and device become the bank's. Not checked
                for NaN/Inf (that would read every row): meant for rows that went through :meth:`add` before.
            sq_norms (Tensor[N] float32, optional): the rows' squared norms as :meth:`add` computes them; computed
                here (through float32 chunks) when not given.
        """
        check_tensor(rows, "rows", ndim=2, dtypes=_STORAGE_DTYPES, allow_empty=True)
        bank = cls(rows.shape[1], rows.dtype, metric, rows.device)
        if sq_norms is None:
            sq_norms = _sq_norms(rows)
        check_tensor(sq_norms, "sq_norms", ndim=1, dtypes=(torch.float32,), allow_empty=True)
        check_same_device({"rows": rows, "sq_norms": sq_norms})
        if sq_norms.shape[0] != rows.shape[0]:
            raise ValueError(f"sq_norms: expected {rows.shape[0]} values like rows, got {sq_norms.shape[0]}")
        bank.rows, bank.sq_norms = rows, sq_norms
        return bank

    def add(self, rows: torch.Tensor) -> MemoryBank:
        """Append ``rows`` (Tensor[n, D], finite, any float dtype; moved to the bank's device/dtype).

        The result is a new in-memory tensor: a memory-mapped bank is copied out of its map (the file is not written).
        """
        check_tensor(rows, "rows", ndim=2, allow_empty=True, finite=True)
        if rows.shape[1] != self.dim:
            raise ValueError(f"rows: expected {self.dim} columns, got shape {tuple(rows.shape)}")
        stored = rows.detach().to(self.device, self.dtype)
        if not bool(torch.isfinite(stored).all()):
            raise ValueError(f"rows: values overflow the bank's {self.dtype}")
        self.rows = torch.cat([self.rows, stored])
        self.sq_norms = torch.cat([self.sq_norms, _sq_norms(stored)])
        return self

    def search(self, query: torch.Tensor, k: int = 1, metric: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`ad_fast.ops.knn` of ``query`` (Tensor[M, D] or [B, M, D]) against the bank's rows; one l2 neighbour
        from a large, wide bank on CPU goes through :func:`ad_fast.ops.pruned_knn.knn_pruned` (the same result,
        ~2.4x faster on DMAD's banks; its projection index is built at the first such search)."""
        if not isinstance(query, torch.Tensor):
            raise TypeError(f"query: expected a torch.Tensor, got {type(query).__name__}")
        if len(self) == 0:
            raise ValueError("MemoryBank.search: the bank is empty; add() rows first")
        metric = self.metric if metric is None else metric
        if self.dtype in BANK_STORAGE_DTYPES and query.dtype == torch.float64:
            query = query.to(torch.float32)
        elif self.dtype not in BANK_STORAGE_DTYPES and query.is_floating_point():
            query = query.to(self.dtype)
        if pruning_pays(self.rows, k, metric, query):
            return knn_pruned(query, self.rows, self._projection_index(), metric)
        return knn(query, self.rows, k, metric, bank_sq_norms=self.sq_norms)

    @property
    def rows(self) -> torch.Tensor:
        """The bank's rows, Tensor[N, D]."""
        return self._rows

    @rows.setter
    def rows(self, value: torch.Tensor) -> None:
        self._rows = value
        self._projection: tuple[int, ProjectionIndex] | None = None  # see _projection_index

    def _projection_index(self) -> ProjectionIndex:
        """The rows' :func:`~ad_fast.ops.pruned_knn.build_projection_index`, built at the first search that uses it
        and rebuilt whenever the rows are replaced (the ``rows`` setter drops it) or changed in place (the tensor's
        version counter)."""
        cached = self._projection
        if cached is None or cached[0] != self._rows._version:
            cached = self._projection = (self._rows._version, build_projection_index(self._rows))
        return cached[1]

    def to(self, device: torch.device | str) -> MemoryBank:
        """Move the rows and norms to ``device`` (in place; returns self). A memory-mapped bank is copied there."""
        self.rows = self.rows.to(device)
        self.sq_norms = self.sq_norms.to(device)
        return self

    def save(self, path: str | os.PathLike) -> None:
        """Write rows and norms to a safetensors file, with the format version and config as metadata.

        The file is written beside ``path`` and renamed onto it, so a bank memory-mapped from the old file (in this
        or another process) keeps reading the old one.
        """
        from safetensors.torch import save_file

        from .._io import atomic_path

        config = {
            "format_version": FORMAT_VERSION,
            "dim": self.dim,
            "dtype": str(self.dtype).replace("torch.", ""),
            "metric": self.metric,
            "sq_norms_sha256": sq_norms_digest(self.sq_norms),
        }
        tensors = {"rows": self.rows.detach().cpu().contiguous(), "sq_norms": self.sq_norms.detach().cpu().contiguous()}
        with atomic_path(path) as tmp:
            save_file(tensors, os.fspath(tmp), metadata={"ad_fast.memory_bank": json.dumps(config)})

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str = "cpu", mmap: bool = False) -> MemoryBank:
        """Read a bank written by :meth:`save`.

        Args:
            device: where the bank lives.
            mmap: on the CPU, keep rows and norms as views of a private memory map of the file instead of reading
                them into memory (:func:`ad_fast.checkpoints.read_safetensors`): loading reads only the header,
                searches read the rows from the page cache (one copy for every process mapping the file; the OS can
                drop it under memory pressure), and the bank is read-only towards the file (see :meth:`add`). The
                file must not be truncated or rewritten in place meanwhile (:meth:`save` replaces it by a rename,
                which is safe). On another device the rows are copied there from the map.

        The stored norms are verified (:func:`verified_sq_norms`): recomputed from the rows without ``mmap``, checked
        against their SHA-256 with it. Rows of a memory-mapped bank are not checked (that would read the file).

        Raises:
            FileNotFoundError: no such file.
            ValueError: a foreign, truncated or corrupt file (the message names ``path``).
        """
        from ..checkpoints import read_safetensors

        path = os.fspath(path)
        meta, tensors = read_safetensors(path, "memory-bank file", mmap=mmap)
        if "ad_fast.memory_bank" not in meta or set(tensors) != {"rows", "sq_norms"}:
            raise ValueError(f"path: {path!r} is not an ad_fast MemoryBank file")
        try:
            config = json.loads(meta["ad_fast.memory_bank"])
        except ValueError as error:
            raise ValueError(f"path: {path!r} has a corrupt MemoryBank config ({error})") from error
        if not isinstance(config, dict) or not {"dim", "dtype", "metric"} <= set(config):
            raise ValueError(f"path: {path!r} has a MemoryBank config without dim/dtype/metric: {config!r}")
        if config.get("format_version") != FORMAT_VERSION:
            version = config.get("format_version")
            raise ValueError(f"path: unsupported MemoryBank format version {version!r} (expected {FORMAT_VERSION})")
        rows, sq_norms = tensors["rows"], tensors["sq_norms"]
        consistent = (
            rows.dim() == 2
            and rows.shape[1] == config["dim"]
            and sq_norms.shape == (rows.shape[0],)
            and sq_norms.dtype == torch.float32
            and rows.dtype == _DTYPE_NAMES.get(config["dtype"])
        )
        if not consistent:
            raise ValueError(f"path: {path!r} holds tensors inconsistent with its MemoryBank config {config}")
        sq_norms = verified_sq_norms(rows, sq_norms, config.get("sq_norms_sha256"), f"path: {path!r}", mmap)
        return cls.from_rows(rows.to(device, copy=not mmap), config["metric"], sq_norms.to(device, copy=not mmap))
