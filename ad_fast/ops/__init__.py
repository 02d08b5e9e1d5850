"""Fused ops behind the models (C++/CUDA kernels with pure-PyTorch reference paths)."""

from .hog import hog
from .hog_transform import HOGTransform
