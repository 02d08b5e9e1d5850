"""The method registry: ``@register_model(name)`` on a :class:`ad_fast.Detector` subclass, ``create_model``."""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Any, TypeVar

BUILTIN_METHODS = ("metauas", "onenip", "dmad", "redi")

_REGISTRY: dict[str, type] = {}
T = TypeVar("T", bound=type)


def register_model(name: str):
    """Class decorator: make ``create_model(name, ...)`` build the decorated class and record ``name`` as its
    ``method`` (the key its model files carry)."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"name: expected a non-empty str, got {name!r}")

    def decorator(cls: T) -> T:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"name: a model called {name!r} is already registered ({_REGISTRY[name]!r})")
        cls.method = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def unregister_model(name: str) -> None:
    """Remove ``name`` from the registry (for tests and plug-ins)."""
    _REGISTRY.pop(name, None)


def _import_method_module(method: str) -> None:
    """Import ``ad_fast.models.<method>`` (which registers itself) if that module exists."""
    module = f"{__package__}.{method}"
    if method.isidentifier() and importlib.util.find_spec(module) is not None:
        importlib.import_module(module)


def list_models() -> list[str]:
    """Sorted names of every registered model (built-in methods are imported first)."""
    for method in BUILTIN_METHODS:
        _import_method_module(method)
    return sorted(_REGISTRY)


def get_model_class(name: str) -> type:
    """The class registered as ``name``; ``ValueError`` listing the choices for an unknown name."""
    if not isinstance(name, str):
        raise TypeError(f"name: expected a str, got {type(name).__name__}")
    if name not in _REGISTRY:
        _import_method_module(name.split(".")[0])
    if name not in _REGISTRY:
        raise ValueError(f"name: unknown model {name!r}; available: {list_models() or 'none registered'}")
    return _REGISTRY[name]


def create_model(name: str, **kwargs: Any) -> Any:
    """A new, unfitted model of the method ``name`` built with its constructor arguments ``kwargs``."""
    return get_model_class(name)(**kwargs)


def saved_method(path: str | os.PathLike) -> str | None:
    """The ``method`` metadata key of an ad_fast model file (the header alone is read); ``None`` for any other
    file (a release checkpoint, a foreign or unreadable file)."""
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception:  # not safetensors
        return None
    method = metadata.get("method")
    legacy = "format" in metadata or "ad_fast.dmad" in metadata  # ad_fast 0.1's per-method formats
    return method if isinstance(method, str) and "format_version" in metadata and not legacy else None
