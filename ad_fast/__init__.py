"""ad_fast: industrial visual anomaly detection (MetaUAS, OneNIP, DMAD, ReDi) on fused C++/CUDA kernels.

Names are imported on first use (PEP 562), so ``import ad_fast.deploy`` (the torch-free runtime) does not import
torch; ``ad_fast.DMAD``, ``from ad_fast import ops`` and the rest work as plain attributes.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__

# public name -> (module, attribute); attribute None: the module itself
_LAZY = {
    "AnomalyResult": (".results", "AnomalyResult"),
    "DMAD": (".models.dmad", "DMAD"),
    "Decision": (".decision", "Decision"),
    "Detector": (".models", "Detector"),
    "MetaUAS": (".models.metauas", "MetaUAS"),
    "OneNIP": (".models.onenip", "OneNIP"),
    "PromptPool": (".models.metauas", "PromptPool"),
    "ReDi": (".models.redi", "ReDi"),
    "create_model": (".models", "create_model"),
    "data": (".data", None),
    "deploy": (".deploy", None),
    "export": (".export", None),
    "list_models": (".models", "list_models"),
    "load_model": (".models", "load_model"),
    "metrics": (".metrics", None),
    "ops": (".ops", None),
    "register_model": (".models", "register_model"),
    "synthesis": (".synthesis", None),
}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'ad_fast' has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name, __name__)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
