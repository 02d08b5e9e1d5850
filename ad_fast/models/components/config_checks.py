"""Checks of the numeric fields of the methods' config dataclasses; each raises a ValueError naming the field."""

from __future__ import annotations

from typing import Any


def check_positive(value: Any, name: str, kind: type = int) -> None:
    """``value`` is an int (``kind=float``: an int or a float) above 0; bools are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int) or not value > 0:
        raise ValueError(f"{name}: expected a positive {kind.__name__}, got {value!r}")


def check_fraction(value: Any, name: str, include_zero: bool = False) -> None:
    """``value`` is a number in (0, 1], or in [0, 1] with ``include_zero``; bools are refused."""
    number = not isinstance(value, bool) and isinstance(value, (int, float))
    if not (number and (value >= 0.0 if include_zero else value > 0.0) and value <= 1.0):
        raise ValueError(f"{name}: expected a number in {'[' if include_zero else '('}0, 1], got {value!r}")
