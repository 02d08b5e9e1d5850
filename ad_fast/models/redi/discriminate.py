"""ReDi stage 2: the trainable part of the discriminate network (feature aggregation + FRB).

It follows Reverse Distillation (spec §2.5): the frozen backbone's features R_Y of the recovered image
(three levels with channels c1, c2, c3 = 256, 512, 1024 for WideResNet-50) are aggregated at the
deepest level's scale (MFF), compressed by a one-class embedding of bottleneck blocks (OCE), and a reverse
decoder of transposed-convolution bottlenecks (the Feature Recovery Block) produces F_Y with the shapes of
F_X. For WideResNet-50 the MFF + OCE hold 58.89 M parameters and the decoder 24.92 M.

The "w/o FRB" ablation (paper Tab. 11, spec §2.5) replaces all of this with :class:`LearnableExtractor`: a
trainable copy of the backbone applied to Y whose layer1-3 outputs are F_Y directly (forward distillation).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .backbone import STEM, resnet_levels


def _conv_bn_relu(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, 2, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class Bottleneck(nn.Module):
    """1x1 -> (3x3 conv, or 2x2 transposed conv when ``upsample``) -> 1x1, expansion 4, residual.

    ``stride`` 2 halves (or, with ``upsample``, doubles) the resolution; the identity path then gets a
    1x1 conv (or 2x2 transposed conv) + BN, as does any change of channels.
    """

    expansion = 4

    def __init__(self, in_ch: int, planes: int, width: int, stride: int = 1, upsample: bool = False) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        if upsample and stride == 2:
            middle: nn.Module = nn.ConvTranspose2d(width, width, 2, stride=2, bias=False)
        else:
            middle = nn.Conv2d(width, width, 3, stride, padding=1, bias=False)
        self.body = nn.Sequential(
            nn.Conv2d(in_ch, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            middle, nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            if upsample and stride == 2:
                proj: nn.Module = nn.ConvTranspose2d(in_ch, out_ch, 2, stride=2, bias=False)
            else:
                proj = nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)
            self.shortcut = nn.Sequential(proj, nn.BatchNorm2d(out_ch))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


def _stage(in_ch: int, planes: int, width: int, blocks: int, upsample: bool) -> nn.Sequential:
    layers = [Bottleneck(in_ch, planes, width, stride=2, upsample=upsample)]
    layers += [Bottleneck(planes * Bottleneck.expansion, planes, width) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class FeatureAggregation(nn.Module):
    """MFF + OCE: cat(down4(R1), down2(R2), R3) -> 3 bottlenecks (first with stride 2).

    forward(feats: [Tensor[B, c1, 4h, 4w], Tensor[B, c2, 2h, 2w], Tensor[B, c3, h, w]])
        -> Tensor[B, 2 * c3, h / 2, w / 2].
    ``width_factor`` 2 gives the wide bottleneck of WideResNet (width 2 * planes).
    """

    def __init__(self, channels: tuple[int, int, int], width_factor: int = 2, blocks: int = 3) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.down1 = nn.Sequential(_conv_bn_relu(c1, c2), _conv_bn_relu(c2, c3))
        self.down2 = _conv_bn_relu(c2, c3)
        planes = c3 // 2
        self.embed = _stage(3 * c3, planes, planes * width_factor, blocks, upsample=False)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        fused = torch.cat([self.down1(feats[0]), self.down2(feats[1]), feats[2]], dim=1)
        return self.embed(fused)


class ReverseDecoder(nn.Module):
    """The Feature Recovery Block: three upsampling bottleneck stages (3, 4, 6 blocks).

    forward(z: Tensor[B, 2 * c3, h / 2, w / 2]) -> [F1 Tensor[B, c1, 4h, 4w], F2 [B, c2, 2h, 2w], F3 [B, c3, h, w]].
    """

    def __init__(self, channels: tuple[int, int, int], width_factor: int = 2, blocks: tuple[int, ...] = (3, 4, 6)) -> None:
        super().__init__()
        c1, c2, c3 = channels
        stages = []
        prev = 2 * c3
        for out_ch, n in zip((c3, c2, c1), blocks):
            planes = out_ch // Bottleneck.expansion
            stages.append(_stage(prev, planes, planes * width_factor, n, upsample=True))
            prev = out_ch
        self.stages = nn.ModuleList(stages)

    def forward(self, z: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for stage in self.stages:
            z = stage(z)
            outs.append(z)
        return outs[::-1]


class DiscriminateStudent(nn.Module):
    """Aggregation + FRB: backbone features of Y -> F_Y with the shapes of F_X."""

    def __init__(self, channels: tuple[int, int, int], width_factor: int = 2) -> None:
        super().__init__()
        self.aggregate = FeatureAggregation(channels, width_factor)
        self.decoder = ReverseDecoder(channels, width_factor)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return self.decoder(self.aggregate(feats))


class LearnableExtractor(nn.Module):
    """"w/o FRB": Extractor 3 of the recovery branch made learnable; its layer1-3 outputs are F_Y.

    A trainable copy of the stem and layer1-3 of ``net`` (the frozen backbone's network), so it starts from the
    same (ImageNet) weights [INF: the paper does not say how it is initialised]; 24.86 M parameters for
    WideResNet-50.
    forward(y: Tensor[B, 3, H, W] in [0, 1]) -> [F1 Tensor[B, c1, H/4, W/4], F2 [B, c2, H/8, W/8], F3 [B, c3, H/16, W/16]].
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        for name in (*STEM, "layer1", "layer2", "layer3"):
            setattr(self, name, copy.deepcopy(getattr(net, name)))
        self.requires_grad_(True)

    def forward(self, y: torch.Tensor) -> list[torch.Tensor]:
        return resnet_levels(self, y, 3)
