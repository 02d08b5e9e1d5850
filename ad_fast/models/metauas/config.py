"""MetaUAS's configuration: the constructor arguments that define a model (the model file's ``config``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def check_img_size(img_size: Any) -> None:
    """Raise ValueError unless ``img_size`` is a positive multiple of 32 (the encoder's total stride)."""
    if not isinstance(img_size, int) or img_size < 32 or img_size % 32:
        raise ValueError(f"img_size: expected a positive multiple of 32, got {img_size!r}")


@dataclass(frozen=True)
class MetaUASConfig:
    """See :class:`ad_fast.MetaUAS`; defaults are the release's (256 px, soft alignment, concatenation)."""

    img_size: int = 256
    alignment: str = "soft"
    fusion: str = "cat"
    padding_version: str = "0.6.3"
    threshold: float = 0.5
    k: int = 1
