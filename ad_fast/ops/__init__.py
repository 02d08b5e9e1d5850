"""Fused kernels behind every method (C++/CUDA with pure-PyTorch reference paths)."""

from .soft_align import hard_align, soft_align
