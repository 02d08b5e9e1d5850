"""Supervised refiner: reconstruction error ``|F - F_hat|`` at stride 16 → anomaly logits at stride 4."""

from __future__ import annotations

import torch
from torch import nn


def _upsampling_block(in_channels: int, channels: int) -> nn.Sequential:
    """3x3 conv (no bias) → BatchNorm → ReLU → 2x2 stride-2 transposed conv (indices 0, 1, 2, 3 as the release)."""
    return nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
                         nn.ReLU(inplace=True), nn.ConvTranspose2d(channels, channels, 2, stride=2))


class Refiner(nn.Module):
    """Two x2 upsampling blocks and a 1x1 predictor: ``[B, C, h, w]`` → logits ``[B, 1, 4h, 4w]``."""

    def __init__(self, in_channels: int = 272, channels: int = 128):
        super().__init__()
        self.upconv1 = _upsampling_block(in_channels, channels)
        self.upconv2 = _upsampling_block(channels, channels)
        self.predictor = nn.Conv2d(channels, 1, 1)

    def forward(self, error: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.upconv2(self.upconv1(error)))
