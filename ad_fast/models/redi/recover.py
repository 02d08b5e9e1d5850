"""ReDi stage 1: the recover network HIP ("HOG with Image Prompt").

Two independent half-width UNet encoders read the HOG map H (N1) and the prompt image X⁺ (N2); their
features are concatenated per scale and one UNet decoder with a Tanh head recovers the image Y in [-1, 1].
The UNet is the RIAD-style UNet (spec §2.4): with ``base_width=64`` the encoders have widths
(32, 64, 128, 256, 256) each, the decoder (512, 256, 128, 64), 22.59 M parameters in all.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(in_ch, out_ch, kernel, stride, padding=1), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]


def unet_widths(base_width: int) -> tuple[int, ...]:
    """Full-width UNet channels per level: (w, 2w, 4w, 8w, 8w)."""
    return (base_width, 2 * base_width, 4 * base_width, 8 * base_width, 8 * base_width)


class UNetEncoder(nn.Module):
    """Five levels: Conv(3x3 s1 at level 1, 4x4 s2 after) -> BN -> ReLU -> Conv3x3 -> BN -> ReLU.

    forward(x: Tensor[B, in_ch, H, W]) -> list of 5 Tensors [B, widths[l], H / 2**l, W / 2**l].
    """

    def __init__(self, in_channels: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        levels = []
        prev = in_channels
        for level, width in enumerate(widths):
            kernel, stride = (3, 1) if level == 0 else (4, 2)
            levels.append(nn.Sequential(*_conv_bn_relu(prev, width, kernel, stride), *_conv_bn_relu(width, width, 3, 1)))
            prev = width
        self.levels = nn.ModuleList(levels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for level in self.levels:
            x = level(x)
            feats.append(x)
        return feats


class UpBlock(nn.Module):
    """ConvTranspose(4x4 s2) -> concat skip -> Conv3x3 -> BN -> ReLU -> Conv3x3 -> BN -> ReLU."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_ch, out_ch, 4, stride=2, padding=1)
        self.fuse = nn.Sequential(*_conv_bn_relu(2 * out_ch, out_ch, 3, 1), *_conv_bn_relu(out_ch, out_ch, 3, 1))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([self.up(x), skip], dim=1))


class UNetDecoder(nn.Module):
    """Four up blocks from the deepest level back to full resolution, then Conv3x3 -> Tanh.

    forward(feats: 5 Tensors as produced by :class:`UNetEncoder` at ``widths``) -> Tensor[B, out_ch, H, W].
    """

    def __init__(self, widths: tuple[int, ...], out_channels: int = 3) -> None:
        super().__init__()
        self.ups = nn.ModuleList(UpBlock(widths[i + 1], widths[i]) for i in reversed(range(len(widths) - 1)))
        self.head = nn.Sequential(nn.Conv2d(widths[0], out_channels, 3, padding=1), nn.Tanh())

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        for up, skip in zip(self.ups, reversed(feats[:-1])):
            x = up(x, skip)
        return self.head(x)


class RecoverNetwork(nn.Module):
    """HIP: Y = Dec(cat(N1(H), N2(X⁺)) per scale), Y in [-1, 1].

    Without a prompt (the "Free" setting of paper Tab. 8) Y = Dec(N1(H)) with a full-width N1, so the decoder
    and its fused feature shapes stay those of HIP [INF: the paper does not describe that network].

    Args:
        map_channels: channels of the self-generated map H (1, or 3 when replicated).
        base_width: full-width UNet base channels (64 in the paper); each encoder uses half.
        use_prompt: build N2 and fuse the prompt image X⁺ (the paper's HIP).
    forward(input_map: Tensor[B, map_channels, H, W], prompt: Tensor[B, 3, H, W] in [-1, 1], or None exactly when
    ``use_prompt`` is False) -> Tensor[B, 3, H, W]. H and W must be multiples of 16.
    N1 keeps the attribute name ``hog_encoder`` (whatever the map) so saved models keep loading.
    """

    def __init__(self, map_channels: int = 1, base_width: int = 64, use_prompt: bool = True) -> None:
        super().__init__()
        full = unet_widths(base_width)
        encoder_widths = tuple(w // 2 for w in full) if use_prompt else full
        self.hog_encoder = UNetEncoder(map_channels, encoder_widths)
        self.prompt_encoder = UNetEncoder(3, encoder_widths) if use_prompt else None
        self.decoder = UNetDecoder(full, out_channels=3)

    def forward(self, input_map: torch.Tensor, prompt: torch.Tensor | None = None) -> torch.Tensor:
        if (prompt is None) != (self.prompt_encoder is None):
            expected = "no prompt (built without one)" if self.prompt_encoder is None else "the prompt image X⁺"
            raise ValueError(f"prompt: this recover network expects {expected}")
        feats = self.hog_encoder(input_map)
        if self.prompt_encoder is not None:
            feats = [torch.cat(pair, dim=1) for pair in zip(feats, self.prompt_encoder(prompt))]
        return self.decoder(feats)
