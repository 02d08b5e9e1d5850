"""Chooses between the compiled kernels and the pure-PyTorch references.

The choice is global (``AD_FAST_BACKEND`` environment variable, :func:`set_backend`, or the
:func:`use_backend` context manager) and can be overridden per call with an op's ``backend=`` argument:

- ``"auto"`` (default): the kernel when one is compiled for the tensor's device, else the reference
  (with a one-time warning);
- ``"kernel"``: the kernel, or a RuntimeError when it is not available;
- ``"reference"``: always the pure-PyTorch reference (every model runs this way too).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Iterator

import torch

from .._extension import has_cuda_ops, has_ops, load_error

BACKENDS = ("auto", "kernel", "reference")


def _checked(name: str, source: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"{source}: expected one of {BACKENDS}, got {name!r}")
    return name


_backend = _checked(os.environ.get("AD_FAST_BACKEND", "auto"), "AD_FAST_BACKEND")
_warned: set[str] = set()


def get_backend() -> str:
    """The global backend choice: "auto", "kernel" or "reference"."""
    return _backend


def set_backend(name: str) -> None:
    """Set the global backend choice ("auto", "kernel" or "reference")."""
    global _backend
    _backend = _checked(name, "backend")


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Context manager that sets the global backend inside a ``with`` block."""
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA"}


def _registered_kernels() -> frozenset[tuple[str, str]]:
    """(op, dispatch key) of every CPU/CUDA kernel the compiled library registered, read once at import
    (a plain constant, so torch.compile needs no dispatcher query)."""
    if not has_ops():
        return frozenset()
    ops = [name.split("::", 1)[1] for name in torch._C._dispatch_get_all_op_names() if name.startswith("ad_fast::")]
    return frozenset(
        (op, key) for op in ops for key in _DISPATCH_KEYS.values()
        if torch._C._dispatch_has_kernel_for_dispatch_key(f"ad_fast::{op}", key)
    )


_KERNELS = _registered_kernels()


def kernel_available(op: str, device: torch.device) -> bool:
    """True when the compiled library registered a kernel of ``ad_fast::<op>`` for ``device``'s type."""
    key = _DISPATCH_KEYS.get(device.type)
    if key is None or not has_ops() or (key == "CUDA" and not has_cuda_ops()):
        return False
    return (op, key) in _KERNELS


def use_kernel(op: str, device: torch.device, backend: str | None = None) -> bool:
    """Decide whether ``op`` on ``device`` runs the compiled kernel (True) or the reference (False)."""
    mode = get_backend() if backend is None else _checked(backend, "backend")
    if mode == "reference":
        return False
    if kernel_available(op, device):
        return True
    reason = load_error() or f"no {device.type} kernel of {op} was compiled"
    if mode == "kernel":
        raise RuntimeError(f"ad_fast.ops.{op}: the compiled kernel is not available on {device} ({reason})")
    if op not in _warned:
        _warned.add(op)
        warnings.warn(f"ad_fast.ops.{op}: using the PyTorch reference on {device} ({reason})", stacklevel=3)
    return False
