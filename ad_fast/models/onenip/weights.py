"""Checkpoint I/O for OneNIP: the release's ``ckpt.pkl`` layout and ad_fast's own format.

Release layout (``{"state_dict": model.state_dict()}`` of the DDP-wrapped model):

- ``module.backbone.<lukemelas name>``: renamed to ``backbone.encoder.<timm name>`` with the MetaUAS mapping
  (``metauas.weights``; same network). ``_fc.*`` (the ImageNet classifier, never used) is dropped.
- ``module.reconstruction.*``: identical names in ad_fast (``pos_embed``, ``transformer``, ``input_proj``,
  ``output_proj``, ``seghead``).

ad_fast format: ``torch.save({"format": "ad_fast.OneNIP", "format_version": 1, "config": {...},
"state_dict": {...}})`` of plain tensors, or a ``.safetensors`` file with format/version/config in its metadata.
The state_dict holds the network (``backbone.*``, ``reconstruction.*``) and the prompt pool
(``prompt_pool.features``); the config holds the constructor arguments, the pool's labels and the calibrated
normalising constant ``kappa``.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch

from ..metauas.weights import load_state_dict_strict, official_to_adfast_key

FORMAT_NAME = "ad_fast.OneNIP"
FORMAT_VERSION = 1
_DDP_PREFIX = "module."
_DROPPED = ("backbone._fc.weight", "backbone._fc.bias")

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "is_release_layout", "load_state_dict_strict", "read_checkpoint",
           "release_to_adfast", "write_checkpoint"]


def _strip_ddp(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len(_DDP_PREFIX):] if k.startswith(_DDP_PREFIX) else k: v for k, v in state_dict.items()}


def is_release_layout(state_dict: Mapping[str, Any]) -> bool:
    """Whether the keys are the release's (lukemelas backbone names, with or without the ``module.`` prefix)."""
    return any(k.removeprefix(_DDP_PREFIX).startswith("backbone._") for k in state_dict)


def release_to_adfast(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a release state_dict to ad_fast's keys.

    Raises:
        ValueError: keys that belong to neither the backbone nor the reconstruction network (listed).
    """
    renamed, unknown = {}, []
    for key, value in _strip_ddp(state_dict).items():
        if key in _DROPPED:
            continue
        if key.startswith("reconstruction."):
            renamed[key] = value
            continue
        try:
            if not key.startswith("backbone."):
                raise KeyError(key)
            renamed["backbone." + official_to_adfast_key("encoder." + key[len("backbone."):])] = value
        except KeyError:
            unknown.append(key)
    if unknown:
        raise ValueError(f"release state_dict: {len(unknown)} unexpected key(s) for OneNIP, e.g. {unknown[:5]}")
    return renamed


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Read a checkpoint → (tensors, ad_fast config or ``None`` for a release/plain state_dict).

    Accepts safetensors and ``torch.save`` files (read with ``weights_only=True``): the release's
    ``{"state_dict": ...}``, a plain state_dict, or ad_fast's format.

    Raises:
        FileNotFoundError: no such file.
        ValueError: truncated/corrupt file, no tensor state_dict, or an unsupported format version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {str(path)!r}")
    if path.stat().st_size < 8:
        raise ValueError(f"{str(path)!r} is not a checkpoint: file is empty or truncated")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as error:
        raise ValueError(f"{str(path)!r} is not a readable PyTorch checkpoint (truncated or corrupt?): {error}") from error
    config = None
    if isinstance(payload, dict) and payload.get("format") == FORMAT_NAME:
        _check_version(payload.get("format_version"), path)
        config = dict(payload.get("config") or {})
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        payload = payload["state_dict"]
    if not isinstance(payload, dict) or not payload or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise ValueError(f"{str(path)!r} does not hold a state_dict of tensors")
    return dict(payload), config


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"{str(path)!r} is not a readable safetensors checkpoint: {error}") from error
    config = None
    if metadata.get("format") == FORMAT_NAME:
        _check_version(int(metadata.get("format_version", -1)), path)
        config = json.loads(metadata.get("config", "{}"))
    if not tensors:
        raise ValueError(f"{str(path)!r} holds no tensors")
    return tensors, config


def _check_version(version: Any, path: Path) -> None:
    if version != FORMAT_VERSION:
        raise ValueError(f"{str(path)!r}: unsupported {FORMAT_NAME} format version {version!r} "
                         f"(this ad_fast reads version {FORMAT_VERSION})")


def write_checkpoint(path: str | os.PathLike, state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> None:
    """Write ad_fast's format: safetensors (``.safetensors`` suffix) or ``torch.save`` of plain tensors + config."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(tensors, str(path), metadata={"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION),
                                                "config": json.dumps(dict(config))})
    else:
        torch.save({"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "config": dict(config),
                    "state_dict": tensors}, path)
