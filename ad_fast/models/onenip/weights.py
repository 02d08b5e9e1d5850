"""Checkpoint I/O for OneNIP: the release's ``ckpt.pkl`` layout and ad_fast 0.1's own format (read only).

Release layout (``{"state_dict": model.state_dict()}`` of the DDP-wrapped model):

- ``module.backbone.<lukemelas name>``: renamed to ``backbone.encoder.<timm name>``
  (:func:`ad_fast.models.components.efficientnet_b4.lukemelas_to_timm_key`, the encoder MetaUAS shares).
  ``_fc.*`` (the ImageNet classifier, never used) is dropped.
- ``module.reconstruction.*``: identical names in ad_fast (``pos_embed``, ``transformer``, ``input_proj``,
  ``output_proj``, ``seghead``).

ad_fast 0.1 format (files written by ``save`` before the one model file of :class:`ad_fast.Detector`):
``torch.save({"format": "ad_fast.OneNIP", "format_version": 1, "config": {...},
"state_dict": {...}})`` of plain tensors, or a ``.safetensors`` file with format/version/config in its metadata.
The state_dict holds the network (``backbone.*``, ``reconstruction.*``) and the prompt pool
(``prompt_pool.features``); the config holds the constructor arguments, the pool's labels and the calibrated
normalising constant ``kappa``.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import torch

from ... import checkpoints
from ..components.efficientnet_b4 import lukemelas_to_timm_key

FORMAT_NAME = "ad_fast.OneNIP"
FORMAT_VERSION = 1
_DDP_PREFIX = "module."
_DROPPED = ("backbone._fc.weight", "backbone._fc.bias")

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "is_release_layout", "read_checkpoint", "release_to_adfast"]


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
            renamed["backbone.encoder." + lukemelas_to_timm_key(key[len("backbone."):])] = value
        except KeyError:
            unknown.append(key)
    if unknown:
        raise ValueError(f"release state_dict: {len(unknown)} unexpected key(s) for OneNIP, e.g. {unknown[:5]}")
    return renamed


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Read a checkpoint → (tensors, ad_fast config or ``None`` for a release/plain state_dict); see
    :func:`ad_fast.checkpoints.read_checkpoint` for what is accepted and raised."""
    return checkpoints.read_checkpoint(path, FORMAT_NAME, FORMAT_VERSION)
