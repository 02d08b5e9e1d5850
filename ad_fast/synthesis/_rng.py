"""Seeding: every synthesis function takes ``rng`` as a NumPy Generator, an int seed or ``None``."""

from __future__ import annotations

from typing import Union

import numpy as np

RandomState = Union[np.random.Generator, int, None]


def as_generator(rng: RandomState) -> np.random.Generator:
    """``rng`` itself if it is a Generator, else ``numpy.random.default_rng(rng)``."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or (isinstance(rng, (int, np.integer)) and not isinstance(rng, bool)):
        return np.random.default_rng(rng)
    raise TypeError(f"rng: expected a numpy.random.Generator, an int seed or None, got {type(rng).__name__}")
