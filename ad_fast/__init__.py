"""ad_fast: industrial visual anomaly detection (MetaUAS, OneNIP, DMAD, ReDi) on fused C++/CUDA kernels."""

from . import ops
from .models.metauas import MetaUAS, PromptPool
from .models.redi import ReDi
from .results import AnomalyResult

__version__ = "0.1.0"

__all__ = ["AnomalyResult", "MetaUAS", "PromptPool", "ReDi", "ops", "__version__"]
