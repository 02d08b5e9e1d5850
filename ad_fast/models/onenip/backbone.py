"""Frozen EfficientNet-B4 block outputs 1/5/9/21 and the MFCN neck that fuses them at stride 16 (272 channels).

The network is the shared timm port of the lukemelas ``efficientnet-b4`` (``models.components.efficientnet_b4``) with the
efficientnet-pytorch 0.7 padding the OneNIP release runs. Lukemelas block indices 1, 5, 9 and 21 are the last blocks
of timm stages 0, 1, 2 and 4 (24, 32, 56 and 160 channels at strides 2, 4, 8 and 16).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..components.efficientnet_b4 import EfficientNetB4Encoder

BLOCK_CHANNELS = (24, 32, 56, 160)
BLOCK_STRIDES = (2, 4, 8, 16)
FEATURE_CHANNELS = sum(BLOCK_CHANNELS)  # 272
FEATURE_STRIDE = 16
# timm stage whose output is each lukemelas block output 1, 5, 9, 21.
_OUTPUT_STAGES = (0, 1, 2, 4)


class OneNIPBackbone(nn.Module):
    """Frozen EfficientNet-B4 → ``[f1, f5, f9, f21]`` ``[B, C_i, H/s_i, W/s_i]`` (C = 24, 32, 56, 160; s = 2..16).

    Always in eval mode (BatchNorm running statistics) and without gradients, as in the release. Blocks after 21
    and the head are kept only so that the release's checkpoint loads strictly; they never run.
    """

    def __init__(self):
        super().__init__()
        self.encoder = EfficientNetB4Encoder(padding_version="0.7")

    def train(self, mode: bool = True) -> "OneNIPBackbone":
        return super().train(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: ImageNet-normalised images ``[B, 3, H, W]`` (H, W multiples of 16) → the four block outputs."""
        encoder = self.encoder
        x = encoder.bn1(encoder.conv_stem(x))
        outputs = []
        for stage in range(_OUTPUT_STAGES[-1] + 1):
            x = encoder.blocks[stage](x)
            if stage in _OUTPUT_STAGES:
                outputs.append(x)
        return outputs


def fuse_features(features: list[torch.Tensor]) -> torch.Tensor:
    """MFCN neck: resize every map by ``s_i / 16`` (bilinear, align_corners=True, no antialias; the release's
    ``UpsamplingBilinear2d``, also used to downsample) and concatenate → ``[B, 272, H/16, W/16]``."""
    fused = []
    for feature, stride in zip(features, BLOCK_STRIDES):
        if stride != FEATURE_STRIDE:
            feature = F.interpolate(feature, scale_factor=stride / FEATURE_STRIDE, mode="bilinear", align_corners=True)
        fused.append(feature)
    return torch.cat(fused, dim=1)
