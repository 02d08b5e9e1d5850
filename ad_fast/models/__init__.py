"""The four methods, behind a small registry: ``create_model(name, **kwargs)`` and ``load_model(path)``.

A method registers its class (or factory) with ``@register_model("dmad")``. A registered class is expected to offer
``fit(dataset)``, ``predict(images) -> AnomalyResult``, ``save(path)`` and a classmethod ``load(path)``, and to record
its registry name as ``"method"`` in the config it saves (see :func:`saved_method`).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Any, Callable, TypeVar

BUILTIN_METHODS = ("metauas", "onenip", "dmad", "redi")

_REGISTRY: dict[str, Callable[..., Any]] = {}
T = TypeVar("T", bound=Callable[..., Any])


def register_model(name: str) -> Callable[[T], T]:
    """Class/function decorator: make ``create_model(name, ...)`` call the decorated object."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"name: expected a non-empty str, got {name!r}")

    def decorator(factory: T) -> T:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"name: a model called {name!r} is already registered ({_REGISTRY[name]!r})")
        _REGISTRY[name] = factory
        return factory

    return decorator


def unregister_model(name: str) -> None:
    """Remove ``name`` from the registry (for tests and plug-ins)."""
    _REGISTRY.pop(name, None)


def _import_method_module(method: str) -> None:
    """Import ``ad_fast.models.<method>`` (which registers itself) if that module exists."""
    module = f"{__name__}.{method}"
    if importlib.util.find_spec(module) is not None:
        importlib.import_module(module)


def list_models() -> list[str]:
    """Sorted names of every registered model (built-in methods are imported first)."""
    for method in BUILTIN_METHODS:
        _import_method_module(method)
    return sorted(_REGISTRY)


def get_model_class(name: str) -> Callable[..., Any]:
    """The class/factory registered as ``name``. ``KeyError``-free: raises ``ValueError`` listing the choices."""
    if not isinstance(name, str):
        raise TypeError(f"name: expected a str, got {type(name).__name__}")
    if name not in _REGISTRY:
        _import_method_module(name.split(".")[0])
    if name not in _REGISTRY:
        raise ValueError(f"name: unknown model {name!r}; available: {list_models() or 'none registered'}")
    return _REGISTRY[name]


def create_model(name: str, **kwargs: Any) -> Any:
    """Build the model registered as ``name`` with ``kwargs``."""
    return get_model_class(name)(**kwargs)


def saved_method(path: str | os.PathLike) -> str | None:
    """The registry name a saved model records, looked up in this order: ``<dir>/config.json`` for a folder,
    a ``<file>.json`` sidecar, safetensors metadata, or a ``"method"`` entry (top level or under ``"config"``) of a
    ``torch.save`` dict. ``None`` if none says."""
    path = Path(path)
    candidates = [path / "config.json"] if path.is_dir() else [path.with_suffix(".json")]
    for candidate in candidates:
        if candidate.is_file():
            try:
                method = json.loads(candidate.read_text()).get("method")
            except (ValueError, AttributeError):
                method = None
            if isinstance(method, str):
                return method
    if not path.is_file():
        return None
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                return (handle.metadata() or {}).get("method")
        except Exception as error:  # safetensors raises its own SafetensorError for truncated or foreign files
            raise ValueError(f"model: {str(path)!r} is not a readable safetensors file ({error})") from error
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None
    if isinstance(state, dict):
        config = state.get("config")
        method = state.get("method") or (config.get("method") if isinstance(config, dict) else None)
        return method if isinstance(method, str) else None
    return None


def load_model(path: str | os.PathLike, method: str | None = None, **kwargs: Any) -> Any:
    """Load a model saved with ``model.save(path)``; ``method`` overrides the name recorded in the file.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the method cannot be told from the file, or is not registered.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"path: saved model not found: {str(path)!r}")
    method = method or saved_method(path)
    if method is None:
        raise ValueError(f"path: cannot tell which method saved {str(path)!r}; pass method=<name> "
                         f"(one of {list_models()})")
    factory = get_model_class(method)
    loader = getattr(factory, "load", None) or getattr(factory, "from_pretrained", None)
    if loader is None:
        raise ValueError(f"method: the model {method!r} has no load()/from_pretrained()")
    return loader(path, **kwargs)


__all__ = ["BUILTIN_METHODS", "create_model", "get_model_class", "list_models", "load_model", "register_model",
           "saved_method", "unregister_model"]
