"""The frozen ImageNet backbone ReDi uses three ways: prompt features, F_X and R_Y (spec §2.3, §2.5)."""

from __future__ import annotations

import os

import torch
from torch import nn

from ..._timm_compat import import_timm
from ..components.imagenet import IMAGENET_MEAN, IMAGENET_STD
from ..components.weights import load_state_dict_file

STEM = ("conv1", "bn1", "act1", "maxpool")


def resnet_levels(net: nn.Module, x: torch.Tensor, depth: int) -> list[torch.Tensor]:
    """ImageNet-normalise images Tensor[B, 3, H, W] in [0, 1], run the ResNet stem of ``net`` (a module with
    ResNet attribute names) and return the outputs of layer1..layer``depth``: [B, c_l, H / 2**(l+1), W / 2**(l+1)]."""
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = (x - mean) / std
    for name in STEM:
        x = getattr(net, name)(x)
    feats = []
    for level in range(1, depth + 1):
        x = getattr(net, f"layer{level}")(x)
        feats.append(x)
    return feats


class FrozenBackbone(nn.Module):
    """A timm ResNet-family network (``wide_resnet50_2`` by default), frozen and always in eval mode.

    Inputs are RGB images Tensor[B, 3, H, W] in [0, 1]; ImageNet normalisation happens inside.
    ``weights`` is a local torchvision/timm state-dict file (``fc.*`` keys are ignored); without it the
    network keeps its random initialisation (no download ever happens).
    """

    def __init__(self, name: str = "wide_resnet50_2", weights: str | os.PathLike | None = None) -> None:
        super().__init__()
        timm = import_timm()
        self.net = timm.create_model(name, pretrained=False, num_classes=0)
        for attr in (*STEM, "layer1", "layer2", "layer3", "layer4"):
            if not hasattr(self.net, attr):
                raise ValueError(f"backbone: {name!r} is not a ResNet-family timm model (no {attr!r})")
        if weights is not None:
            state = {k: v for k, v in load_state_dict_file(weights, "backbone_weights").items() if not k.startswith("fc.")}
            try:
                missing, unexpected = self.net.load_state_dict(state, strict=False)
            except RuntimeError as error:  # shape mismatches
                raise ValueError(f"backbone_weights: tensors do not fit {name!r}: {error}") from error
            if missing or unexpected:
                raise ValueError(f"backbone_weights: keys do not match {name!r}: missing {missing[:5]}, unexpected {unexpected[:5]}")
        self.net.requires_grad_(False)
        self.channels: tuple[int, int, int] = tuple(int(info["num_chs"]) for info in self.net.feature_info[1:4])
        self.eval()

    def train(self, mode: bool = True) -> "FrozenBackbone":
        return super().train(False)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """layer1..layer3 outputs: [B, c1, H/4, W/4], [B, c2, H/8, W/8], [B, c3, H/16, W/16]."""
        return resnet_levels(self.net, x, 3)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled layer4 output Tensor[B, c4] (2048-d for WideResNet-50): the prompt feature."""
        return resnet_levels(self.net, x, 4)[-1].mean(dim=(2, 3))
