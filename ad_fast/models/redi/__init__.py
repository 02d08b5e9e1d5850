"""ReDi: recover-then-discriminate anomaly detection (HOG + prompt recover network, RD-style discriminator)."""

from .config import ReDiConfig
from .model import ReDi

__all__ = ["ReDi", "ReDiConfig"]
