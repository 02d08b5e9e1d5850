"""Loads the compiled ``ad_fast._C`` extension and reports what it was built with.

``_C`` is tied to the C++ interface of the torch it was compiled against. setup.py records that torch in
``ad_fast/_built_with.py``; loading ``_C`` under another torch release raises ImportError naming both versions
(instead of an undefined-symbol error or, worse, a crash). A checkout with no build has no record and no ``_C``:
the ops then run their pure-PyTorch references.
"""

from __future__ import annotations

import functools
from types import ModuleType

import torch


def _public(version: str) -> str:
    """The release part of a torch version: "2.13.0+cpu" -> "2.13.0"."""
    return version.split("+", 1)[0]


def check_build_torch(record: ModuleType | None) -> None:
    """Raise ImportError when the running torch is not the one ``_C`` was built against (``record``: the
    ``_built_with`` module, or None when there is none). Local labels (+cpu, +cu128) may differ; the release may
    not, and a build with CUDA kernels needs a torch with CUDA."""
    if record is None:
        return
    built, running = record.TORCH_VERSION, torch.__version__
    fix = (f"reinstall ad_fast against this torch (`pip install --no-build-isolation --force-reinstall --no-deps .` "
           f"from the source), or install torch=={_public(built)}")
    if _public(built) != _public(running):
        raise ImportError(f"ad_fast's kernels were built against torch {built}, but torch {running} is running; "
                          f"they only load with the torch release they were compiled against: {fix}")
    if record.CUDA_VERSION is not None and torch.version.cuda is None:
        raise ImportError(f"ad_fast's kernels were built with CUDA {record.CUDA_VERSION} kernels against torch {built}, "
                          f"but the running torch {running} has no CUDA: {fix}")


def _build_record() -> ModuleType | None:
    try:
        from . import _built_with
    except ImportError:
        return None
    return _built_with


@functools.lru_cache(maxsize=None)
def _load() -> str | None:
    """Import ``ad_fast._C`` (which registers the ``torch.ops.ad_fast`` ops); return None or the import error.
    Raises ImportError when ``_C`` was built against another torch (see :func:`check_build_torch`)."""
    check_build_torch(_build_record())
    try:
        from . import _C  # noqa: F401
    except ImportError as error:
        return str(error)
    return None


def has_ops() -> bool:
    """True when the compiled kernels are importable."""
    return _load() is None


def load_error() -> str | None:
    """Why ``ad_fast._C`` failed to import, or None when it loaded."""
    return _load()


@functools.lru_cache(maxsize=None)
def build_info() -> frozenset[str]:
    """Backends compiled into ``_C`` (e.g. ``{"cpu", "openmp", "cuda"}``); empty when ``_C`` is missing."""
    if not has_ops():
        return frozenset()
    return frozenset(torch.ops.ad_fast._build_info().split(","))


def has_cuda_ops() -> bool:
    """True when ``_C`` holds CUDA kernels (they still need a visible GPU to run)."""
    return "cuda" in build_info()


def cpu_capability() -> str | None:
    """Instruction set the CPU kernels' hot loops run with: "default", "avx2" or "avx512" (the best this CPU
    supports, lowered by ``AD_FAST_CPU_CAPABILITY``); None without ``_C``."""
    if not has_ops() or not hasattr(torch.ops.ad_fast, "_cpu_capability"):
        return None
    return torch.ops.ad_fast._cpu_capability()
