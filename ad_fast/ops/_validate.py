"""Argument checks shared by the public ops: each failure names the argument and what was expected."""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def check_tensor(
    x: object,
    name: str,
    *,
    ndim: int | Sequence[int] | None = None,
    dtypes: Iterable[torch.dtype] | None = FLOAT_DTYPES,
    allow_empty: bool = False,
    finite: bool = False,
) -> torch.Tensor:
    """Return ``x`` after checking it is a tensor of the given rank(s) and dtype(s).

    Raises:
        TypeError: ``x`` is not a tensor, or has a dtype outside ``dtypes``.
        ValueError: wrong rank, zero elements (unless ``allow_empty``), or NaN/Inf (when ``finite``).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.dim() not in allowed:
            shapes = " or ".join(f"{d}-d" for d in allowed)
            raise ValueError(f"{name}: expected a {shapes} tensor, got shape {tuple(x.shape)}")
    if dtypes is not None:
        allowed_dtypes = tuple(dtypes)
        if x.dtype not in allowed_dtypes:
            names = ", ".join(str(d).replace("torch.", "") for d in allowed_dtypes)
            raise TypeError(f"{name}: expected dtype in ({names}), got {str(x.dtype).replace('torch.', '')}")
    if not allow_empty and x.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty tensor, got shape {tuple(x.shape)}")
    if finite and x.is_floating_point() and values_readable() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: contains NaN or Inf")
    return x


def values_readable() -> bool:
    """False while torch.compile or torch.export traces: a graph cannot branch on tensor values, so value checks
    (NaN/Inf) are skipped there; the compiled kernels still check theirs."""
    return not (torch.compiler.is_compiling() or torch.compiler.is_exporting())


def check_same_device(tensors: dict[str, torch.Tensor]) -> torch.device:
    """Return the common device of ``tensors`` (name → tensor) or raise ValueError naming the odd one."""
    items = list(tensors.items())
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.device != first.device:
            raise ValueError(f"{name}: expected a tensor on {first.device} like {first_name}, got {t.device}")
    return first.device


def check_positive_pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """``value`` as a pair of positive ints (an int is repeated)."""
    if isinstance(value, int):
        pair = (value, value)
    elif isinstance(value, (tuple, list, torch.Size)):
        pair = tuple(value)
    else:
        raise ValueError(f"{name}: expected a positive int or a pair of positive ints, got {value!r}")
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair):
        raise ValueError(f"{name}: expected a positive int or a pair of positive ints, got {value!r}")
    return int(pair[0]), int(pair[1])


def check_choice(value: str, name: str, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``, else ValueError."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}: expected one of {tuple(choices)}, got {value!r}")
    return value
