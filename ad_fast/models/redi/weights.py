"""Save and load a ReDi model as one safetensors file: every tensor + the JSON configuration in its metadata."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

FORMAT_NAME = "ad_fast.ReDi"
FORMAT_VERSION = 1


def save_model_file(path: str | os.PathLike, state: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    """Write ``state`` (plain tensors) and ``info`` (JSON-able) to ``path``."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    metadata = {"method": "redi", "format": FORMAT_NAME, "format_version": str(FORMAT_VERSION), "info": json.dumps(info)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)


def load_model_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read what :func:`save_model_file` wrote.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not a safetensors file, not a ReDi file, or an unsupported format version.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: ReDi model file not found: {str(path)!r}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:
        raise ValueError(f"path: cannot read {str(path)!r} as a safetensors file: {error}") from error
    if metadata.get("format") != FORMAT_NAME:
        raise ValueError(f"path: {str(path)!r} is not a ReDi model file (format {metadata.get('format')!r})")
    if metadata.get("format_version") != str(FORMAT_VERSION):
        raise ValueError(f"path: unsupported ReDi format version {metadata.get('format_version')!r} (expected {FORMAT_VERSION})")
    try:
        info = json.loads(metadata["info"])
    except (KeyError, json.JSONDecodeError) as error:
        raise ValueError(f"path: {str(path)!r} has no readable configuration: {error}") from error
    return state, info
