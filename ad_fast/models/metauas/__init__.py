"""MetaUAS (universal anomaly segmentation with one normal prompt), compatible with the official checkpoints."""

from .model import MetaUAS, PromptEncoding
from .pool import PromptPool

__all__ = ["MetaUAS", "PromptEncoding", "PromptPool"]
