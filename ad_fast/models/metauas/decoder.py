"""UNet decoder with scSE attention, laid out as the smp fork the MetaUAS release uses (same module names)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DECODER_CHANNELS = (256, 128, 64, 64, 48)


class SCSE(nn.Module):
    """Concurrent spatial and channel squeeze-and-excitation: ``x * cSE(x) + x * sSE(x)``."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = channels // reduction
        self.cSE = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True),
                                 nn.Conv2d(hidden, channels, 1), nn.Sigmoid())
        self.sSE = nn.Sequential(nn.Conv2d(channels, 1, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.cSE(x) + x * self.sSE(x)


class _Attention(nn.Module):
    """Holder so that parameter names read ``attentionN.attention.cSE...`` as in the release."""

    def __init__(self, channels: int):
        super().__init__()
        self.attention = SCSE(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(x)


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class DecoderBlock(nn.Module):
    """Nearest 2x upsample → [concat skip → scSE] → (conv3x3-BN-ReLU) x2 → [scSE]; scSE only with a skip."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        has_skip = skip_channels > 0
        self.attention1 = _Attention(in_channels + skip_channels) if has_skip else nn.Identity()
        self.conv1 = _conv_bn_relu(in_channels + skip_channels, out_channels)
        self.conv2 = _conv_bn_relu(out_channels, out_channels)
        self.attention2 = _Attention(out_channels) if has_skip else nn.Identity()

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if skip is not None:
            x = self.attention1(torch.cat([x, skip], dim=1))
        return self.attention2(self.conv2(self.conv1(x)))


class UnetDecoder(nn.Module):
    """Decodes ``[F1, F2, F3', F4', F5']`` (deepest last) to ``[B, 48, H, W]`` at the input resolution.

    Args:
        level_channels: channels of the five decoder inputs, shallowest first, e.g. (48, 32, 112, 320, 896)
            for MetaUAS with concatenation fusion.
    """

    def __init__(self, level_channels: tuple[int, ...], decoder_channels: tuple[int, ...] = DECODER_CHANNELS):
        super().__init__()
        if len(level_channels) != 5 or len(decoder_channels) != 5:
            raise ValueError("UnetDecoder: expected five feature levels and five decoder widths")
        deep_first = list(reversed(level_channels))
        in_channels = [deep_first[0]] + list(decoder_channels[:-1])
        skip_channels = deep_first[1:] + [0]
        self.blocks = nn.ModuleList(DecoderBlock(i, s, o) for i, s, o in zip(in_channels, skip_channels, decoder_channels))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """features: ``[F1..F5]`` shallowest first → decoded ``[B, decoder_channels[-1], 2*H1, 2*W1]``."""
        x, skips = features[-1], features[-2::-1]
        for i, block in enumerate(self.blocks):
            x = block(x, skips[i] if i < len(skips) else None)
        return x
