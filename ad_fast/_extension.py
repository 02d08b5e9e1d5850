"""Loads the compiled ``ad_fast._C`` extension and reports what it was built with."""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=None)
def _load() -> str | None:
    """Import ``ad_fast._C`` (which registers the ``torch.ops.ad_fast`` ops); return None or the import error."""
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
