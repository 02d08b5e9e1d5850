"""Weight files and strict loading, shared by every method: one reader for local backbone weights, one strict
``load_state_dict`` with an error that names the keys."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import torch

from ...checkpoints import read_safetensors


def load_state_dict_file(path: str | os.PathLike, name: str = "weights") -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a ``torch.save`` checkpoint (read with ``weights_only=True``).

    Unwraps ``{"state_dict": ...}`` / ``{"model": ...}`` and strips a leading ``module.`` (DDP).

    Raises:
        FileNotFoundError: no such file. ValueError: unreadable, or not a flat dict of tensors (messages start
        with ``name``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{name}: weights file not found: {str(path)!r}")
    if path.suffix == ".safetensors":
        try:
            state = read_safetensors(path, "weights file")[1]
        except ValueError as error:
            raise ValueError(f"{name}: cannot read weights from {str(path)!r}: {error}") from error
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # corrupt file, pickle with code objects, ...
            raise ValueError(f"{name}: cannot read weights from {str(path)!r}: {error}") from error
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{name}: {str(path)!r} does not hold a state dict of tensors")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def load_state_dict_strict(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str,
                           assign: bool = False) -> None:
    """``module.load_state_dict(strict=True)`` with one clear ``ValueError`` naming missing/unexpected/misshaped
    keys. ``assign``: keep the given tensors (e.g. memory-mapped ones) instead of copying into the module's."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshaped = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
                 for k in expected if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s), e.g. {missing[:5]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:5]}")
    if misshaped:
        problems.append(f"{len(misshaped)} shape mismatch(es), e.g. {misshaped[:3]}")
    if problems:
        raise ValueError(f"{source}: checkpoint does not match the model: " + "; ".join(problems))
    module.load_state_dict(dict(state_dict), strict=True, assign=assign)
