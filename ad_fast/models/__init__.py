"""The four methods on one contract (:class:`ad_fast.Detector`), behind a registry.

``create_model(name, **options)`` builds a method, ``load_model(path)`` reads any model file written by
``model.save(path)`` (its ``method`` metadata key says which class), ``load_model(path, method=name)`` also reads a
research release's checkpoint through that method's ``from_pretrained``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .base import LEGACY_HINT, Detector, is_legacy
from .legacy import convert
from .registry import (BUILTIN_METHODS, create_model, get_model_class, list_models, register_model, saved_method,
                       unregister_model)


def load_model(path: str | os.PathLike, method: str | None = None, device: str | Any = "cpu", mmap: bool = False,
               **overrides: Any) -> Detector:
    """Load a model file written by :meth:`Detector.save` (``method`` must then match the file, if given), or,
    with ``method``, a research release's checkpoint (``from_pretrained`` of that method).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: not a model file and no ``method`` given, or the file's method differs from ``method``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"path: saved model not found: {str(path)!r}")
    recorded = saved_method(path)
    if recorded is not None:
        if method is not None and method != recorded:
            raise ValueError(f"method: {str(path)!r} holds a {recorded!r} model, not {method!r}")
        return Detector.load(path, device=device, mmap=mmap, **overrides)
    if method is None:
        hint = (LEGACY_HINT if _is_legacy_file(path) else
                f"for a research release's checkpoint pass method=<name> (one of {list_models()})")
        raise ValueError(f"path: {str(path)!r} is not an ad_fast model file; {hint}")
    if mmap:
        raise ValueError(f"mmap: {str(path)!r} is a release checkpoint, not an ad_fast model file; only model files "
                         "can be memory-mapped")
    return get_model_class(method).from_pretrained(path, **overrides).to(device)


def _is_legacy_file(path: Path) -> bool:
    from ..checkpoints import read_safetensors

    try:
        return is_legacy(read_safetensors(path, "model file", mmap=True)[0])
    except ValueError:  # not safetensors
        return False


__all__ = ["BUILTIN_METHODS", "Detector", "convert", "create_model", "get_model_class", "list_models", "load_model",
           "register_model", "saved_method", "unregister_model"]
