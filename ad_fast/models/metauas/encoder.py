"""Frozen EfficientNet-B4 encoder with the five feature levels the MetaUAS release uses.

The network is timm's ``tf_efficientnet_b4`` (TF "same" padding, BatchNorm eps 1e-3, SiLU), which has the same
layers, in the same order, as the lukemelas ``efficientnet-b4`` the release was trained with; ``weights.py`` maps
the lukemelas key names onto it. Level 1 is the 48-channel stem output (not timm's 24-channel block-1 output).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from ..._timm_compat import check_stem_activation, import_timm

LEVEL_CHANNELS = (48, 32, 56, 160, 448)
STAGE_DEPTHS = (2, 4, 4, 6, 6, 8, 2)
# Level l (1..5) = stem, then timm stages [0, 2), [2, 3), [3, 5), [5, 7).
_LEVEL_STAGES = ((0, 2), (2, 3), (3, 5), (5, 7))
PADDING_VERSIONS = ("0.6.3", "0.7")


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
