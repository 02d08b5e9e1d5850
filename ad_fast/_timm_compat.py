"""Import timm where PyPI's CUDA-only torchvision cannot load against a CPU torch, and check the timm behaviour
ad_fast relies on.

PyPI ships torchvision built for CUDA; against the CPU torch wheel ``import torchvision`` (and with it
``import timm``) fails with "operator torchvision::nms does not exist", because torchvision's Python layer
registers fake kernels for ops its missing C library should have defined. Defining the two op schemas it
looks up (``nms`` and ``qnms``) first lets torchvision and timm import; ad_fast never calls those ops.
Where torchvision loads normally this module does nothing.

timm >= 0.9 folds each EfficientNet stem activation into ``bn1`` (a BatchNormAct2d); older releases keep it in a
separate ``act1`` that ``bn1(conv_stem(x))`` skips, so features silently change (MetaUAS maps by ~4e-3 under timm
0.4.12). :func:`import_timm` refuses a timm below that floor and :func:`check_stem_activation` checks the
behaviour itself on the model that depends on it; both raise ImportError naming the timm version needed.
"""

from __future__ import annotations

import importlib
import re
from types import ModuleType

from torch import nn

TIMM_MINIMUM = (0, 9)
_TIMM_NEEDED = "timm >= 0.9 is needed (`pip install 'timm>=1.0'`)"

_shimmed = False


def _define_missing_torchvision_ops() -> None:
    global _shimmed
    if _shimmed:
        return
    import torch

    library = torch.library.Library("torchvision", "DEF")  # noqa: F841  (kept alive below)
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.define(
        "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
    )
    globals()["_library"] = library
    _shimmed = True


def _import_timm() -> ModuleType:
    try:
        return importlib.import_module("timm")
    except RuntimeError as error:
        if "torchvision::nms" not in str(error):
            raise
    import sys

    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.") or m == "timm" or m.startswith("timm.")]:
        del sys.modules[name]
    _define_missing_torchvision_ops()
    return importlib.import_module("timm")


def import_timm() -> ModuleType:
    """Return the ``timm`` module, applying the torchvision shim only if the plain import fails; ImportError
    when it is older than ``TIMM_MINIMUM``."""
    timm = _import_timm()
    release = tuple(int(part) for part in re.findall(r"\d+", timm.__version__)[:2])
    if release < TIMM_MINIMUM:
        raise ImportError(f"{_TIMM_NEEDED}, found timm {timm.__version__}")
    return timm


def check_stem_activation(model: nn.Module, name: str) -> None:
    """Raise ImportError unless ``model.bn1`` applies the stem activation (timm >= 0.9's BatchNormAct2d, whose
    ``act`` is not Identity); ``name`` names the model in the message."""
    act = getattr(model.bn1, "act", None)
    if isinstance(act, nn.Module) and not isinstance(act, nn.Identity):
        return
    version = _import_timm().__version__
    raise ImportError(f"{_TIMM_NEEDED}: {name}'s bn1 ({type(model.bn1).__name__}) applies no activation, so "
                      f"bn1(conv_stem(x)) would drop the stem activation (found timm {version})")
