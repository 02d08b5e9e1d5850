"""Checkpoint I/O for MetaUAS: the official key layout (lukemelas/smp names) and ad_fast 0.1's own format.

Key mapping, official → ad_fast: ``encoder.*`` as :mod:`ad_fast.models.components.efficientnet_b4` maps lukemelas
names to timm's; ``alignment.{i}.alignment_layer.dimensionality_reduction`` → ``alignment.{i}.reduction``
(i = 0: F5, 1: F4, 2: F3); everything else is identical (``decoder.*``, ``mask_head.*``).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import torch

from ... import checkpoints

from ..components.efficientnet_b4 import lukemelas_to_timm_key, timm_to_lukemelas_key
from ..components.weights import load_state_dict_strict

FORMAT_NAME = "ad_fast.MetaUAS"
FORMAT_VERSION = 1

_OFFICIAL_ALIGN = "alignment_layer.dimensionality_reduction"


def official_to_adfast_key(key: str) -> str:
    """Rename one official MetaUAS state_dict key to ad_fast's layout (unknown names raise ``KeyError``)."""
    if key.startswith("encoder."):
        return "encoder." + lukemelas_to_timm_key(key[len("encoder."):])
    if key.startswith("alignment.") and _OFFICIAL_ALIGN in key:
        return key.replace(_OFFICIAL_ALIGN, "reduction")
    if key.startswith(("decoder.", "mask_head.")):
        return key
    raise KeyError(key)


def adfast_to_official_key(key: str) -> str:
    """Inverse of :func:`official_to_adfast_key`."""
    if key.startswith("encoder."):
        return "encoder." + timm_to_lukemelas_key(key[len("encoder."):])
    if key.startswith("alignment.") and ".reduction." in key:
        return key.replace(".reduction.", f".{_OFFICIAL_ALIGN}.")
    if key.startswith(("decoder.", "mask_head.")):
        return key
    raise KeyError(key)


def _rename(state_dict: Mapping[str, torch.Tensor], rename, source: str) -> dict[str, torch.Tensor]:
    renamed, unknown = {}, []
    for key, value in state_dict.items():
        try:
            renamed[rename(key)] = value
        except KeyError:
            unknown.append(key)
    if unknown:
        raise ValueError(f"{source}: {len(unknown)} unexpected key(s) for MetaUAS, e.g. {unknown[:5]}")
    return renamed


def official_to_adfast(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a whole official state_dict (``ValueError`` listing keys that have no ad_fast counterpart)."""
    return _rename(state_dict, official_to_adfast_key, "official state_dict")


def adfast_to_official(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an ad_fast MetaUAS state_dict to the official release's key layout."""
    return _rename(state_dict, adfast_to_official_key, "ad_fast state_dict")


def is_official_layout(state_dict: Mapping[str, Any]) -> bool:
    """Whether the keys look like the official release (``encoder._conv_stem.weight`` present)."""
    return "encoder._conv_stem.weight" in state_dict


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Read a checkpoint → (tensors, ad_fast config or ``None`` for a plain/official state_dict); see
    :func:`ad_fast.checkpoints.read_checkpoint` for what is accepted and raised."""
    return checkpoints.read_checkpoint(path, FORMAT_NAME, FORMAT_VERSION)


def load_encoder_weights(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load ImageNet EfficientNet-B4 weights into ``model.encoder``: a lukemelas ``efficientnet-b4-*.pth``
    (``_fc`` is dropped) or a timm ``tf_efficientnet_b4`` state_dict (``classifier`` is dropped)."""
    state_dict, _ = read_checkpoint(path)
    if "_conv_stem.weight" in state_dict:
        state_dict = official_to_adfast({f"encoder.{k}": v for k, v in state_dict.items() if not k.startswith("_fc.")})
        state_dict = {k[len("encoder."):]: v for k, v in state_dict.items()}
    else:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("classifier.")}
    load_state_dict_strict(model.encoder, state_dict, f"encoder weights {str(path)!r}")
