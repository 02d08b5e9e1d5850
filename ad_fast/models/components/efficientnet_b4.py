"""Frozen EfficientNet-B4 encoder with five feature levels (MetaUAS uses them all, OneNIP four block outputs).

The network is timm's ``tf_efficientnet_b4`` (TF "same" padding, BatchNorm eps 1e-3, SiLU), which has the same
layers, in the same order, as the lukemelas ``efficientnet-b4`` both releases were trained with;
:func:`lukemelas_to_timm_key` maps the lukemelas key names onto it. Level 1 is the 48-channel stem output (not
timm's 24-channel block-1 output).

Key mapping, lukemelas → timm (names relative to the encoder):

=============================================================  ==============================================
lukemelas (efficientnet-pytorch)                               timm ``tf_efficientnet_b4``
=============================================================  ==============================================
``_conv_stem`` / ``_bn0`` / ``_conv_head`` / ``_bn1``          ``conv_stem`` / ``bn1`` / ``conv_head`` / ``bn2``
``_blocks.{n}`` (n = 0..31, global index)                      ``blocks.{stage}.{i}`` (stages of 2,4,4,6,6,8,2)
block n in 0..1: ``_depthwise_conv, _bn1, _se_reduce,``        ``conv_dw, bn1, se.conv_reduce,``
``_se_expand, _project_conv, _bn2``                            ``se.conv_expand, conv_pw, bn2``
block n >= 2: ``_expand_conv, _bn0, _depthwise_conv, _bn1,``   ``conv_pw, bn1, conv_dw, bn2,``
``_se_reduce, _se_expand, _project_conv, _bn2``                ``se.conv_reduce, se.conv_expand, conv_pwl, bn3``
=============================================================  ==============================================
"""

from __future__ import annotations

import os
import re

import torch
import torch.nn.functional as F
from torch import nn

from ..._timm_compat import check_stem_activation, import_timm

LEVEL_CHANNELS = (48, 32, 56, 160, 448)
STAGE_DEPTHS = (2, 4, 4, 6, 6, 8, 2)
# Level l (1..5) = stem, then timm stages [0, 2), [2, 3), [3, 5), [5, 7).
_LEVEL_STAGES = ((0, 2), (2, 3), (3, 5), (5, 7))
PADDING_VERSIONS = ("0.6.3", "0.7")

_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}
_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_se_reduce": "se.conv_reduce",
                        "_se_expand": "se.conv_expand", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED_RESIDUAL = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                      "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand", "_project_conv": "conv_pwl",
                      "_bn2": "bn3"}
_BLOCK_POSITION = [(stage, i) for stage, depth in enumerate(STAGE_DEPTHS) for i in range(depth)]
_BLOCK_INDEX = {position: n for n, position in enumerate(_BLOCK_POSITION)}


def _invert(table: dict[str, str]) -> dict[str, str]:
    return {value: key for key, value in table.items()}


def lukemelas_to_timm_key(key: str) -> str:
    """Rename one lukemelas encoder key (e.g. ``_blocks.3._bn0.weight``) to timm's (``blocks.1.1.bn1.weight``);
    unknown names raise ``KeyError``."""
    match = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
    if match:
        n, module, param = int(match.group(1)), match.group(2), match.group(3)
        if n >= len(_BLOCK_POSITION):
            raise KeyError(key)
        stage, i = _BLOCK_POSITION[n]
        table = _DEPTHWISE_SEPARABLE if stage == 0 else _INVERTED_RESIDUAL
        if module not in table:
            raise KeyError(key)
        return f"blocks.{stage}.{i}.{table[module]}.{param}"
    match = re.fullmatch(r"(_\w+?)\.(\w+)", key)
    if match and match.group(1) in _TOP_LEVEL:
        return f"{_TOP_LEVEL[match.group(1)]}.{match.group(2)}"
    raise KeyError(key)


def timm_to_lukemelas_key(key: str) -> str:
    """Inverse of :func:`lukemelas_to_timm_key`."""
    match = re.fullmatch(r"blocks\.(\d+)\.(\d+)\.(\w+(?:\.conv_\w+)?)\.(\w+)", key)
    if match:
        stage, i, module, param = int(match.group(1)), int(match.group(2)), match.group(3), match.group(4)
        table = _invert(_DEPTHWISE_SEPARABLE if stage == 0 else _INVERTED_RESIDUAL)
        if (stage, i) not in _BLOCK_INDEX or module not in table:
            raise KeyError(key)
        return f"_blocks.{_BLOCK_INDEX[(stage, i)]}.{table[module]}.{param}"
    match = re.fullmatch(r"(\w+?)\.(\w+)", key)
    table = _invert(_TOP_LEVEL)
    if match and match.group(1) in table:
        return f"{table[match.group(1)]}.{match.group(2)}"
    raise KeyError(key)


class _Conv2dFixedPad(nn.Conv2d):
    """A convolution that zero-pads its input by a fixed (left, right, top, bottom) amount (static TF padding)."""

    def __init__(self, conv: nn.Conv2d, padding: tuple[int, int, int, int]):
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0,
                         conv.dilation, conv.groups, bias=conv.bias is not None)
        self.fixed_padding = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.fixed_padding))


class EfficientNetB4Encoder(nn.Module):
    """EfficientNet-B4 feature pyramid ``[F1..F5]`` with channels (48, 32, 56, 160, 448) at strides 2..32.

    Args:
        padding_version: ``"0.6.3"`` (default; what the release's pinned efficientnet-pytorch computes: block 6's
            stride-2 5x5 depthwise conv pads (1, 2, 1, 2)) or ``"0.7"`` (efficientnet-pytorch >= 0.7 pads it (2, 2, 2, 2)).
            All other convolutions pad identically in both versions for inputs whose sides are multiples of 32.
    """

    def __init__(self, padding_version: str = "0.6.3"):
        super().__init__()
        if padding_version not in PADDING_VERSIONS:
            raise ValueError(f"padding_version: expected one of {PADDING_VERSIONS}, got {padding_version!r}")
        self.padding_version = padding_version
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        net = import_timm().create_model("tf_efficientnet_b4", pretrained=False, num_classes=0)
        check_stem_activation(net, "tf_efficientnet_b4")  # forward runs bn1(conv_stem(x))
        self.conv_stem, self.bn1, self.blocks = net.conv_stem, net.bn1, net.blocks
        # Never run; kept so that the official checkpoint (which holds them) loads strictly and round-trips.
        self.conv_head, self.bn2 = net.conv_head, net.bn2
        if padding_version == "0.7":
            block6 = self.blocks[2][0]
            block6.conv_dw = _Conv2dFixedPad(block6.conv_dw, (2, 2, 2, 2))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "EfficientNetB4Encoder":
        """The encoder is frozen: it always stays in eval mode (BatchNorm uses its running statistics)."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: normalised images ``[B, 3, H, W]`` (H, W multiples of 32) → ``[F1..F5]``, F_l ``[B, C_l, H/2^l, W/2^l]``."""
        x = self.bn1(self.conv_stem(x))
        features = [x]
        for start, stop in _LEVEL_STAGES:
            for stage in range(start, stop):
                x = self.blocks[stage](x)
            features.append(x)
        return features
