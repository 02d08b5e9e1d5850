"""MetaUAS's configuration: the constructor arguments that define a model (the model file's ``config``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...data.images import check_image_side
from ..components.config_checks import check_fraction, check_positive


def check_img_size(img_size: Any) -> None:
    """Raise ValueError unless ``img_size`` is a multiple of 32 (the encoder's total stride) up to 8192."""
    check_image_side(img_size, "img_size", multiple=32, minimum=32)


@dataclass(frozen=True)
class MetaUASConfig:
    """See :class:`ad_fast.MetaUAS`; defaults are the release's (256 px, soft alignment, concatenation)."""

    img_size: int = 256
    alignment: str = "soft"
    fusion: str = "cat"
    padding_version: str = "0.6.3"
    threshold: float = 0.5
    k: int = 1

    def __post_init__(self) -> None:
        check_img_size(self.img_size)
        check_fraction(self.threshold, "threshold", include_zero=True)
        check_positive(self.k, "k")
