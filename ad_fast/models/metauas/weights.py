"""Checkpoint I/O for MetaUAS: the official key layout (lukemelas/smp names) and ad_fast's own format.

Key mapping, official → ad_fast (everything else is identical, e.g. ``decoder.*`` and ``mask_head.*``):

====================================================================  ==========================================
official (efficientnet-pytorch + smp fork)                            ad_fast (timm ``tf_efficientnet_b4``)
====================================================================  ==========================================
``encoder._conv_stem`` / ``_bn0`` / ``_conv_head`` / ``_bn1``          ``encoder.conv_stem`` / ``bn1`` / ``conv_head`` / ``bn2``
``encoder._blocks.{n}`` (n = 0..31, global index)                     ``encoder.blocks.{stage}.{i}`` (stages of 2,4,4,6,6,8,2 blocks)
block n in 0..1: ``_depthwise_conv, _bn1, _se_reduce, _se_expand,``   ``conv_dw, bn1, se.conv_reduce, se.conv_expand,``
``_project_conv, _bn2``                                               ``conv_pw, bn2``
block n >= 2: ``_expand_conv, _bn0, _depthwise_conv, _bn1,``          ``conv_pw, bn1, conv_dw, bn2,``
``_se_reduce, _se_expand, _project_conv, _bn2``                       ``se.conv_reduce, se.conv_expand, conv_pwl, bn3``
``alignment.{i}.alignment_layer.dimensionality_reduction``            ``alignment.{i}.reduction`` (i = 0: F5, 1: F4, 2: F3)
====================================================================  ==========================================
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

import torch

from ... import checkpoints

from ..components.weights import load_state_dict_strict
from .encoder import STAGE_DEPTHS

FORMAT_NAME = "ad_fast.MetaUAS"
FORMAT_VERSION = 1

_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}
_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_se_reduce": "se.conv_reduce",
                        "_se_expand": "se.conv_expand", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED_RESIDUAL = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                      "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand", "_project_conv": "conv_pwl",
                      "_bn2": "bn3"}
_BLOCK_POSITION = [(stage, i) for stage, depth in enumerate(STAGE_DEPTHS) for i in range(depth)]
_BLOCK_INDEX = {position: n for n, position in enumerate(_BLOCK_POSITION)}
_OFFICIAL_ALIGN = "alignment_layer.dimensionality_reduction"


def _invert(table: Mapping[str, str]) -> dict[str, str]:
    return {value: key for key, value in table.items()}


def official_to_adfast_key(key: str) -> str:
    """Rename one official MetaUAS state_dict key to ad_fast's layout (unknown names raise ``KeyError``)."""
    match = re.fullmatch(r"encoder\._blocks\.(\d+)\.(\w+)\.(\w+)", key)
    if match:
        n, module, param = int(match.group(1)), match.group(2), match.group(3)
        if n >= len(_BLOCK_POSITION):
            raise KeyError(key)
        stage, i = _BLOCK_POSITION[n]
        table = _DEPTHWISE_SEPARABLE if stage == 0 else _INVERTED_RESIDUAL
        if module not in table:
            raise KeyError(key)
        return f"encoder.blocks.{stage}.{i}.{table[module]}.{param}"
    match = re.fullmatch(r"encoder\.(_\w+?)\.(\w+)", key)
    if match:
        if match.group(1) not in _TOP_LEVEL:
            raise KeyError(key)
        return f"encoder.{_TOP_LEVEL[match.group(1)]}.{match.group(2)}"
    if key.startswith("alignment.") and _OFFICIAL_ALIGN in key:
        return key.replace(_OFFICIAL_ALIGN, "reduction")
    if key.startswith(("decoder.", "mask_head.")):
        return key
    raise KeyError(key)


def adfast_to_official_key(key: str) -> str:
    """Inverse of :func:`official_to_adfast_key`."""
    match = re.fullmatch(r"encoder\.blocks\.(\d+)\.(\d+)\.(\w+(?:\.conv_\w+)?)\.(\w+)", key)
    if match:
        stage, i, module, param = int(match.group(1)), int(match.group(2)), match.group(3), match.group(4)
        table = _invert(_DEPTHWISE_SEPARABLE if stage == 0 else _INVERTED_RESIDUAL)
        if (stage, i) not in _BLOCK_INDEX or module not in table:
            raise KeyError(key)
        return f"encoder._blocks.{_BLOCK_INDEX[(stage, i)]}.{table[module]}.{param}"
    match = re.fullmatch(r"encoder\.(\w+?)\.(\w+)", key)
    if match:
        table = _invert(_TOP_LEVEL)
        if match.group(1) not in table:
            raise KeyError(key)
        return f"encoder.{table[match.group(1)]}.{match.group(2)}"
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
