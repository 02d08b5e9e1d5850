"""Tensor files: reading any tensor state_dict safely, reading and (atomically) writing safetensors.

:func:`read_checkpoint` reads the research releases' files and the files of ad_fast 0.1's per-method formats
(e.g. ``"ad_fast.MetaUAS"`` version 1: safetensors with the config in the metadata, or ``torch.save`` of
``{"format", "format_version", "config", "state_dict"}``) with ``weights_only=True``: nothing is unpickled beyond
tensors and containers. ad_fast's one model file is written by :meth:`ad_fast.Detector.save`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch


def read_checkpoint(path: str | os.PathLike, format_name: str,
                    format_version: int) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Read a checkpoint → (tensors, config of ``format_name`` or ``None`` for a plain/foreign state_dict).

    Accepts safetensors files and ``torch.save`` files: a plain state_dict, a ``{"state_dict": ...}`` wrapper (as
    research releases save), or the own format.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is empty, truncated or corrupt, holds no tensor state_dict, or has another format version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {str(path)!r}")
    if path.stat().st_size < 8:
        raise ValueError(f"{str(path)!r} is not a checkpoint: file is empty or truncated ({path.stat().st_size} bytes)")
    if path.suffix == ".safetensors":
        return _read_safetensors(path, format_name, format_version)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many types on garbage (UnpicklingError, EOFError, BadZipFile, ...)
        raise ValueError(f"{str(path)!r} is not a readable PyTorch checkpoint (truncated or corrupt?): {error}") from error
    config = None
    if isinstance(payload, dict) and payload.get("format") == format_name:
        _check_version(payload.get("format_version"), path, format_name, format_version)
        config = dict(payload.get("config") or {})
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        payload = payload["state_dict"]
    if not isinstance(payload, dict) or not payload or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise ValueError(f"{str(path)!r} does not hold a state_dict of tensors")
    return dict(payload), config


def read_safetensors(path: str | os.PathLike, what: str = "checkpoint",
                     mmap: bool = False) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a safetensors file on the CPU.

    Args:
        mmap: return views of one private (copy-on-write) memory map of the whole file, made with
            ``torch.UntypedStorage.from_file(path, shared=False)``: opening reads only the header, pages are read
            from the page cache when first touched and the OS may drop them again; writes to the tensors stay in
            this process, the file is never changed. The file must not be truncated or rewritten in place while
            the tensors live (replacing it by a rename, as ad_fast's writers do, is safe). Default: the tensors
            ``safetensors.safe_open`` returns.

    Raises:
        FileNotFoundError: no such file (messages start with "path:" and name ``what``).
        ValueError: truncated, corrupt or not safetensors, or (``mmap``) a tensor not aligned to its dtype.
    """
    from safetensors import safe_open

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path: {what} not found: {path!r}")
    try:
        with safe_open(path, framework="pt") as handle:  # validates the header against the file size
            metadata = handle.metadata() or {}
            tensors = None if mmap else {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as error:  # safetensors raises its own types for truncated or foreign files
        raise ValueError(f"path: {path!r} is not a readable safetensors {what} ({error})") from error
    return metadata, _mapped_tensors(path) if mmap else tensors


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64,
    "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}


def _mapped_tensors(path: str) -> dict[str, torch.Tensor]:
    """Every tensor of a (validated) safetensors file as a view of one private memory map of the file.

    Layout: 8-byte little-endian header size, JSON header, then the data; ``data_offsets`` count from the data's
    start. safetensors pads the header to 8 bytes and orders tensors by decreasing alignment, so each tensor
    starts at a multiple of its item size (checked).
    """
    with open(path, "rb") as file:
        header_size = int.from_bytes(file.read(8), "little")
        header = json.loads(file.read(header_size))
    storage = torch.UntypedStorage.from_file(path, shared=False, nbytes=os.path.getsize(path))
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
        start = 8 + header_size + info["data_offsets"][0]
        if dtype is None or start % dtype.itemsize:
            problem = (f"its dtype {info['dtype']} is not supported" if dtype is None else
                       f"it starts at byte {start}, not at a multiple of its {dtype.itemsize}-byte items")
            raise ValueError(f"path: {path!r}: tensor {name!r} cannot be memory-mapped: {problem} (use mmap=False)")
        tensors[name] = torch.empty(0, dtype=dtype).set_(storage, start // dtype.itemsize, info["shape"])
    return tensors


def _read_safetensors(path: Path, format_name: str,
                      format_version: int) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    metadata, tensors = read_safetensors(path)
    config = None
    if metadata.get("format") == format_name:
        _check_version(int(metadata.get("format_version", -1)), path, format_name, format_version)
        config = json.loads(metadata.get("config", "{}"))
    if not tensors:
        raise ValueError(f"{str(path)!r} holds no tensors")
    return tensors, config


def _check_version(version: Any, path: Path, format_name: str, format_version: int) -> None:
    if version != format_version:
        raise ValueError(f"{str(path)!r}: unsupported {format_name} format version {version!r} "
                         f"(this ad_fast reads version {format_version})")


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    """Write ``tensors`` (copied to the CPU, contiguous; tensors sharing memory are cloned) and the string
    ``metadata`` to a safetensors file, atomically (:func:`ad_fast._io.atomic_path`)."""
    from safetensors.torch import save_file

    from ._io import atomic_path

    plain, seen = {}, set()
    for name, tensor in tensors.items():
        tensor = tensor.detach().cpu().contiguous()
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset()) if tensor.numel() else None
        if key is not None and (key in seen or tensor.untyped_storage().nbytes() != tensor.nbytes):
            tensor = tensor.clone()  # safetensors refuses views into a shared or larger storage
        seen.add(key)
        plain[name] = tensor
    with atomic_path(path) as tmp:
        save_file(plain, str(tmp), metadata=dict(metadata))
