"""ReDi's configuration: every open choice of the spec (redi.md §7, §8) as a checked, JSON-able field."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from ...data.images import check_image_side
from ...ops._validate import check_choice

INPUT_MAPS = ("hog", "sobel", "roberts", "canny")
PROMPTS = ("pretrained", "free")


@dataclass(frozen=True)
class ReDiConfig:
    """Defaults reproduce the paper's setting (256 px, WideResNet-50, HOG 9 bins / 8x8 cells, λ_M = λ_S = 1).

    ``input_map``, ``prompt``, ``frb``, ``hog_orientations`` and ``hog_cell`` also select the paper's ablations
    (spec §6.5): Tab. 5 maps, Tab. 8 prompts, Tab. 11 "w/o FRB", Tab. 10 HOG (bin 4, 8x8) and (bin 18, 4x4).

    Attributes:
        img_size: square training/inference resolution; a multiple of 32.
        backbone: timm ResNet-family name of the frozen network (prompt features, F_X, R_Y).
        hip_width: full-width UNet base channels of the recover network (each encoder uses half).
        student_width_factor: bottleneck width multiplier of the aggregation/FRB (2 = "wide", as WRN-50).
        input_map: the self-generated map H fed to the recover network: "hog" (the paper's), or the Tab. 5
            alternatives "sobel" (cv2.Sobel, ksize 3), "roberts" or "canny" (cv2.Canny(gray, 50, 100)).
        prompt: "pretrained" (X⁺ = nearest normal training image by backbone features; the paper's) or "free"
            (Tab. 8: no prompt, the recover network sees H only). Tab. 8's "self_supervised" prompt feature
            is not specified by the paper and is not implemented.
        frb: True (aggregation + Feature Recovery Block, reverse distillation; the paper's) or False (Tab. 11
            "w/o FRB": a learnable copy of the backbone on Y gives F_Y directly).
        hog_orientations, hog_cell: HOG bins and cell size in pixels (used when ``input_map="hog"``).
        hog_colour: "rgb" (dominant channel, as scikit-image) or "gray".
        hog_scale: "fixed" (clip(h / 10, 0, 1) on 0-255 data) or "max" (per-image division by the maximum).
        hog_channels: 1, or 3 to replicate the map H (any ``input_map``); the recover network's input channels.
        msgms_weight: λ_M of the recovery loss; self_corr_weight: λ_S of the discrimination loss.
        blur_sigma: Gaussian σ of the anomaly map (None or 0 disables it).
        batch_size, weight_decay: shared by both AdamW stages.
        stage1_epochs, stage1_lr, stage1_milestones: recover network schedule (lr × 0.5 at each milestone).
        stage2_epochs, stage2_lr, stage2_milestones: discriminate network schedule.
        seed: seeds the network initialisation and the per-epoch shuffling (so a resumed run matches an unbroken one).
    """

    img_size: int = 256
    backbone: str = "wide_resnet50_2"
    hip_width: int = 64
    student_width_factor: int = 2
    hog_orientations: int = 9
    hog_cell: int = 8
    hog_colour: str = "rgb"
    hog_scale: str = "fixed"
    hog_channels: int = 1
    input_map: str = "hog"
    prompt: str = "pretrained"
    frb: bool = True
    msgms_weight: float = 1.0
    self_corr_weight: float = 1.0
    blur_sigma: float | None = 4.0
    batch_size: int = 32
    weight_decay: float = 0.01
    stage1_epochs: int = 500
    stage1_lr: float = 5e-4
    stage1_milestones: tuple[int, ...] = (200, 400)
    stage2_epochs: int = 300
    stage2_lr: float = 5e-3
    stage2_milestones: tuple[int, ...] = (100, 200)
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "stage1_milestones", tuple(self.stage1_milestones))
        object.__setattr__(self, "stage2_milestones", tuple(self.stage2_milestones))
        check_image_side(self.img_size, "img_size", multiple=32)
        for name in ("hip_width", "student_width_factor", "hog_orientations", "hog_cell", "batch_size"):
            _positive_int(getattr(self, name), name)
        if self.hip_width % 2:
            raise ValueError(f"hip_width: expected an even number (encoders use half), got {self.hip_width}")
        if self.hog_cell < 2 or self.hog_cell > self.img_size:
            raise ValueError(f"hog_cell: expected 2..img_size pixels, got {self.hog_cell}")
        check_choice(self.hog_colour, "hog_colour", ("rgb", "gray"))
        check_choice(self.hog_scale, "hog_scale", ("fixed", "max"))
        if self.hog_channels not in (1, 3) or isinstance(self.hog_channels, bool):
            raise ValueError(f"hog_channels: expected 1 or 3, got {self.hog_channels!r}")
        check_choice(self.input_map, "input_map", INPUT_MAPS)
        if self.prompt == "self_supervised":
            raise ValueError("prompt: 'self_supervised' (paper Tab. 8) is not implemented: the paper does not specify "
                             f"its feature network; expected one of {PROMPTS}")
        check_choice(self.prompt, "prompt", PROMPTS)
        if not isinstance(self.frb, bool):
            raise ValueError(f"frb: expected True or False, got {self.frb!r}")
        if not isinstance(self.backbone, str) or not self.backbone:
            raise TypeError(f"backbone: expected a timm model name, got {self.backbone!r}")
        for name in ("msgms_weight", "self_corr_weight", "weight_decay"):
            _non_negative(getattr(self, name), name)
        if self.blur_sigma is not None:
            _non_negative(self.blur_sigma, "blur_sigma")
        for stage in ("stage1", "stage2"):
            _non_negative_int(getattr(self, f"{stage}_epochs"), f"{stage}_epochs")
            lr = getattr(self, f"{stage}_lr")
            _non_negative(lr, f"{stage}_lr")
            if lr == 0:
                raise ValueError(f"{stage}_lr: expected a positive number, got {lr}")
            for milestone in getattr(self, f"{stage}_milestones"):
                _positive_int(milestone, f"{stage}_milestones")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise TypeError(f"seed: expected an int, got {self.seed!r}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["stage1_milestones"] = list(self.stage1_milestones)
        out["stage2_milestones"] = list(self.stage2_milestones)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ReDiConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"config: unknown ReDi options {unknown}")
        return cls(**data)


def _positive_int(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value}")


def _non_negative_int(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {value!r}")
    if value < 0:
        raise ValueError(f"{name}: expected an int >= 0, got {value}")


def _non_negative(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number, got {value!r}")
    if not value >= 0:
        raise ValueError(f"{name}: expected a number >= 0, got {value}")
