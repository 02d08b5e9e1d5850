"""Pure-PyTorch reference implementations of every op (same signatures as ad_fast.ops)."""

from .hog import hog_reference as hog
