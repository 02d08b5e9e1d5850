"""OneNIP (unified multi-class anomaly detection with one normal image prompt), compatible with the release's
checkpoints."""

from .model import OneNIP
from .training import TrainOptions

__all__ = ["OneNIP", "TrainOptions"]
