"""MetaUAS (universal anomaly segmentation with one normal prompt), compatible with the official checkpoints."""

from .encoding import PromptEncoding
from .model import MetaUAS
from .pool import PromptPool

__all__ = ["MetaUAS", "PromptEncoding", "PromptPool"]
