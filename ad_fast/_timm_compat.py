"""Import timm where PyPI's CUDA-only torchvision cannot load against a CPU torch.

PyPI ships torchvision built for CUDA; against the CPU torch wheel ``import torchvision`` (and with it
``import timm``) fails with "operator torchvision::nms does not exist", because torchvision's Python layer
registers fake kernels for ops its missing C library should have defined. Defining the two op schemas it
looks up (``nms`` and ``qnms``) first lets torchvision and timm import; ad_fast never calls those ops.
Where torchvision loads normally this module does nothing.
"""

from __future__ import annotations

import importlib
from types import ModuleType

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


def import_timm() -> ModuleType:
    """Return the ``timm`` module, applying the torchvision shim only if the plain import fails."""
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
