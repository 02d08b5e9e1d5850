"""ad_fast's kernels: one public function per op, each with a pure-PyTorch twin in ``ad_fast.ops.reference``.

Backends: ``backend_info()`` says what was compiled; ``set_backend`` / ``use_backend`` / the
``AD_FAST_BACKEND`` environment variable force the kernels or the references globally.
"""

from __future__ import annotations

from .. import _extension
from . import reference
from ._backend import get_backend, set_backend, use_backend
from .anomaly_map import anomaly_map
from .blur import gaussian_blur
from .hog import hog
from .hog_transform import HOGTransform
from .kcenter_greedy import kcenter_greedy
from .knn import knn
from .memory_bank import MemoryBank
from .soft_align import hard_align, soft_align


def backend_info() -> dict[str, object]:
    """What the compiled extension provides: ``{"compiled": bool, "backends": [...], "cpu_capability":
    "default"|"avx2"|"avx512"|None, "cuda_available": bool, "selected": "auto"|"kernel"|"reference",
    "error": str | None}``."""
    import torch

    return {
        "compiled": _extension.has_ops(),
        "backends": sorted(_extension.build_info()),
        "cpu_capability": _extension.cpu_capability(),
        "cuda_available": torch.cuda.is_available(),
        "selected": get_backend(),
        "error": _extension.load_error(),
    }


__all__ = [
    "HOGTransform",
    "MemoryBank",
    "anomaly_map",
    "backend_info",
    "gaussian_blur",
    "get_backend",
    "hard_align",
    "hog",
    "kcenter_greedy",
    "knn",
    "reference",
    "set_backend",
    "soft_align",
    "use_backend",
]
