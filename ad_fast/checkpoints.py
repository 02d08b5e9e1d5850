"""ad_fast's checkpoint files: reading any tensor state_dict safely and writing the versioned own format.

A model module names its format (e.g. ``"ad_fast.MetaUAS"``, version 1); files are safetensors (``.safetensors``
suffix, config in the metadata) or ``torch.save`` of ``{"format", "format_version", "config", "state_dict"}`` with
plain tensors only, read back with ``weights_only=True``: nothing is unpickled beyond tensors and containers.
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


def read_safetensors(path: str | os.PathLike, what: str = "checkpoint") -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a safetensors file on the CPU.

    Raises:
        FileNotFoundError: no such file (messages start with "path:" and name ``what``).
        ValueError: truncated, corrupt or not safetensors.
    """
    from safetensors import safe_open

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path: {what} not found: {path!r}")
    try:
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as error:  # safetensors raises its own types for truncated or foreign files
        raise ValueError(f"path: {path!r} is not a readable safetensors {what} ({error})") from error
    return metadata, tensors


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


def write_checkpoint(path: str | os.PathLike, state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any],
                     format_name: str, format_version: int) -> None:
    """Write the own format: safetensors (``.safetensors`` suffix) or ``torch.save`` of plain tensors + config.

    A ``"method"`` entry of ``config`` is also stored at the top of the safetensors metadata, where
    ``ad_fast.models.load_model`` looks for it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        metadata = {"format": format_name, "format_version": str(format_version), "config": json.dumps(dict(config))}
        if "method" in config:
            metadata["method"] = str(config["method"])
        save_file(tensors, str(path), metadata=metadata)
    else:
        torch.save({"format": format_name, "format_version": format_version, "config": dict(config),
                    "state_dict": tensors}, path)
