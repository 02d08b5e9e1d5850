"""OneNIP's configuration: the constructor arguments that define a model (the model file's ``config``)."""

from __future__ import annotations

from dataclasses import dataclass

from ...data.images import check_image_side
from ..components.config_checks import check_fraction, check_positive
from .backbone import FEATURE_STRIDE

BACKBONES = ("efficientnet_b4",)


@dataclass(frozen=True)
class OneNIPConfig:
    """See :class:`ad_fast.OneNIP`; defaults are the release's. ``kappa`` is set by ``fit`` / ``calibrate``."""

    img_size: int = 256
    backbone: str = "efficientnet_b4"
    alpha: float = 0.5
    decoder_variant: str = "v2_fixed"
    hidden_dim: int = 256
    heads: int = 8
    ffn_dim: int = 1024
    encoder_depth: int = 4
    decoder_depth: int = 4
    dropout: float = 0.1
    neighbour: list | None = None
    avgpool_size: int = 16
    kappa: float | None = None

    def __post_init__(self) -> None:
        if self.neighbour is not None:
            object.__setattr__(self, "neighbour", [int(n) for n in self.neighbour])
        check_image_side(self.img_size, "img_size", multiple=FEATURE_STRIDE, minimum=32)
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone: expected one of {BACKBONES}, got {self.backbone!r}")
        check_fraction(self.alpha, "alpha", include_zero=True)
        check_positive(self.avgpool_size, "avgpool_size")
