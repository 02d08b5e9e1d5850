"""ad_fast: industrial visual anomaly detection (MetaUAS, OneNIP, DMAD, ReDi) on fused C++/CUDA kernels."""

from . import data, metrics, ops, synthesis
from ._version import __version__
from .decision import Decision
from .models import Detector, create_model, list_models, load_model, register_model
from .models.dmad import DMAD
from .models.metauas import MetaUAS, PromptPool
from .models.onenip import OneNIP
from .models.redi import ReDi
from .results import AnomalyResult


__all__ = [
    "AnomalyResult",
    "DMAD",
    "Decision",
    "Detector",
    "MetaUAS",
    "OneNIP",
    "PromptPool",
    "ReDi",
    "__version__",
    "create_model",
    "data",
    "list_models",
    "load_model",
    "metrics",
    "ops",
    "register_model",
    "synthesis",
]
