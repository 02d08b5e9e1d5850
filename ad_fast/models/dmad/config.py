"""DMAD's configuration: the constructor arguments that define a model, checked, JSON-able (the model file's
``config``)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ...data.images import check_image_side
from ..components.config_checks import check_fraction, check_positive
from .knowledge import ATTENTION_MODES
from .training import TrainConfig

MODES = ("dmad", "memory_bank")
IMAGE_SCORES = ("max", "topk_mean")
DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class DMADConfig:
    """See :class:`ad_fast.DMAD` for the meaning of each field; defaults are the paper's."""

    backbone: str = "wide_resnet50_2"
    layers: list | None = None
    weights: str | None = None
    mode: str = "dmad"
    image_size: int = 256
    embed_dim: int = 1536
    coreset_ratio: float = 0.02
    outlier_ratio: float = 0.10
    outlier_beta: float = 0.6
    n_textures: int = 47
    textures: str | None = None
    synthetic_anomalies: int = 0
    center_noise_std: float = 0.01
    mask_threshold: float = 0.0
    attention: str | None = None
    hidden: int = 1024
    mapper_layers: int = 4
    train: dict | None = None
    image_score: str | None = None
    top_k: int = 5
    blur_sigma: float = 4.0
    feature_dtype: str = "float32"
    bank_dtype: str = "float32"
    batch_size: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        set_("layers", None if self.layers is None else list(self.layers))
        for name in ("weights", "textures"):
            value = getattr(self, name)
            set_(name, None if value is None else os.fspath(value))
        set_("train", dict(self.train or {}))
        if self.mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {self.mode!r}")
        if self.attention is not None and self.attention not in ATTENTION_MODES:
            raise ValueError(f"attention: expected None or one of {ATTENTION_MODES}, got {self.attention!r}")
        if self.image_score is not None and self.image_score not in IMAGE_SCORES:
            raise ValueError(f"image_score: expected None or one of {IMAGE_SCORES}, got {self.image_score!r}")
        for name in ("feature_dtype", "bank_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ValueError(f"{name}: expected one of {DTYPES}, got {getattr(self, name)!r}")
        check_image_side(self.image_size, "image_size")
        for name in ("embed_dim", "n_textures", "hidden", "mapper_layers", "top_k", "batch_size"):
            check_positive(getattr(self, name), name)
        value = self.synthetic_anomalies
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"synthetic_anomalies: expected a non-negative int, got {value!r}")
        check_fraction(self.coreset_ratio, "coreset_ratio")
        check_fraction(self.outlier_ratio, "outlier_ratio")
        check_positive(self.blur_sigma, "blur_sigma", float)
        TrainConfig(**self.train)  # checks the keys
