"""ReDi (Xing et al., "A Recover-then-Discriminate Framework for Robust Anomaly Detection", SCIS 2024).

Pipeline (spec redi.md §2, §4) for an image X resized to ``img_size``:
HOG map H = HOG(X); prompt X⁺ = nearest normal training image (cosine of pooled backbone features);
Y = HIP(H, X⁺); F_X = backbone(X), F_Y = FRB(MFF(backbone(Y))); map = Σ_levels up(1 − cos(F_X, F_Y)),
optional Gaussian blur, score = max. One model per category by default; :meth:`ReDi.fit_categories`
also trains one unified model over all categories. The paper's ablations are configuration options
(:class:`ReDiConfig`: ``input_map``, ``prompt``, ``frb``, ``hog_orientations`` / ``hog_cell``).

Deviations from RD's evaluation code (spec §9.3), inherited from the shared ``ad_fast.ops.anomaly_map``:
bilinear upsampling with align_corners=False (RD: True) and a reflect-101 blur border (SciPy: symmetric).
Training images are stored as uint8 at ``img_size`` (they double as the prompt bank saved with the model).
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import torch
from torch import nn

from ...data import ImageInput, resize_image, to_image_batch
from ...ops import anomaly_map
from ...results import AnomalyResult
from ..base import Detector
from ..components.weights import load_state_dict_strict
from ..components.inputs import normal_images
from ..registry import register_model
from .backbone import FrozenBackbone
from .config import ReDiConfig
from .discriminate import DiscriminateStudent, LearnableExtractor
from .losses import discrimination_loss, recovery_loss
from .maps import build_map_transform, to_uint8
from .prompt import retrieve_prompts
from .recover import RecoverNetwork
from .training import run_stage

_FEATURE_CHUNK = 16


@register_model("redi")
class ReDi(Detector):
    """Recover-then-discriminate anomaly detector.

    Args:
        img_size: square working resolution (multiple of 32); 256 in the paper.
        backbone_weights: local state-dict file for the frozen backbone (torchvision/timm keys); without it the
            backbone keeps a seeded random initialisation (nothing is ever downloaded).
        config: a full :class:`ReDiConfig` instead of ``img_size`` + ``options``.
        **options: any other :class:`ReDiConfig` field (e.g. ``stage1_epochs=10``, ``backbone="resnet18"``).

    Ablation options (paper §4.3, spec §6.5; the defaults are the paper's ReDi):
        input_map: "hog" | "sobel" | "roberts" | "canny" — the self-generated map H (Tab. 5). Sobel, Roberts and
            Canny are computed with OpenCV on the uint8 ``cv2.COLOR_RGB2GRAY`` image: Sobel ksize 3 and Roberts
            gradient magnitudes (divided by their largest possible value), ``cv2.Canny(gray, 50, 100)`` / 255;
            every map is scaled to [-1, 1] with ``hog_channels`` (1 or 3) channels, the recover network's input.
        hog_orientations, hog_cell: HOG bins and cell size (Tab. 10: 9 / 8 default, ablated 4 / 8 and 18 / 4).
        prompt: "pretrained" (nearest normal training image by pooled backbone features) | "free" (Tab. 8: no
            prompt and no retrieval; the recover network is a full-width UNet on H, no prompt bank is stored).
        frb: True (aggregation + FRB) | False (Tab. 11 "w/o FRB": F_Y = a trainable copy of the backbone's
            stem and layer1-3 applied to Y, initialised from the frozen backbone; forward distillation).

    Example::

        model = ReDi(img_size=256, backbone_weights="wide_resnet50_2.pth")
        model.fit(train_images, checkpoint_dir="runs/bottle")     # both stages, resumable
        result = model.predict(test_images)                         # AnomalyResult
        model.save("redi_bottle.safetensors"); ReDi.load("redi_bottle.safetensors")
    """

    Config = ReDiConfig
    default_batch_size = 8

    def __init__(
        self,
        img_size: int = 256,
        backbone_weights: str | os.PathLike | None = None,
        config: ReDiConfig | None = None,
        **options,
    ) -> None:
        super().__init__()
        if config is None:
            config = ReDiConfig(img_size=img_size, **options)
        elif options:
            raise ValueError(f"options: give either config or keyword options, not both (got {sorted(options)})")
        elif not isinstance(config, ReDiConfig):
            raise TypeError(f"config: expected a ReDiConfig, got {type(config).__name__}")
        self.config = config
        self.map_transform = build_map_transform(config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.backbone = FrozenBackbone(config.backbone, backbone_weights)
            self.recover = RecoverNetwork(self.map_transform.out_channels, config.hip_width, self.uses_prompt)
            self.student: nn.Module = (
                DiscriminateStudent(self.backbone.channels, config.student_width_factor)
                if config.frb else LearnableExtractor(self.backbone.net)
            )
        size = config.img_size
        self.register_buffer("prompt_images", torch.zeros(0, 3, size, size, dtype=torch.uint8))
        self.register_buffer("prompt_features", torch.zeros(0, self.backbone.net.num_features))
        self.trained_stages: list[int] = []
        self.history: dict[str, list[float]] = {}

    @classmethod
    def _from_config(cls, config: ReDiConfig) -> "ReDi":
        return cls(config=config)

    # ----------------------------------------------------------------- building blocks

    @property
    def input_size(self) -> tuple[int, int]:
        return (self.config.img_size, self.config.img_size)

    @property
    def uses_prompt(self) -> bool:
        """Whether the recover network takes a retrieved prompt image X⁺ (``prompt="pretrained"``)."""
        return self.config.prompt == "pretrained"

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part: recover, then aggregation + frb (``frb=True``) or extractor (``frb=False``),
        backbone; ``"trainable"`` = recover + student (the paper's 106.4 M by default), ``"total"`` adds the backbone."""
        count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
        counts = {"recover": count(self.recover)}
        if self.config.frb:
            counts.update(aggregation=count(self.student.aggregate), frb=count(self.student.decoder))
        else:
            counts["extractor"] = count(self.student)
        counts["backbone"] = count(self.backbone)
        counts["trainable"] = counts["recover"] + count(self.student)
        counts["total"] = counts["trainable"] + counts["backbone"]
        return counts

    def preprocess(self, images: ImageInput | Sequence[ImageInput]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Images (anything :func:`ad_fast.data.to_image_batch` takes) → Tensor[B, 3, S, S] in [0, 1] and the input sizes."""
        tensors, sizes = to_image_batch(images)
        resized = [resize_image(t, self.config.img_size) for t in tensors]
        return torch.stack(resized).clamp_(0.0, 1.0), sizes

    def generate_map(self, x: torch.Tensor) -> torch.Tensor:
        """Self-generated map H (``config.input_map``) of Tensor[B, 3, S, S] in [0, 1] → Tensor[B, hog_channels, S, S]
        in [-1, 1]."""
        return self.map_transform(x)

    def prompt_feature(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone feature Tensor[B, D] of images in [0, 1] (chunked, no grad)."""
        with torch.no_grad():
            return torch.cat([self.backbone.pooled(chunk.to(self.device)) for chunk in x.split(_FEATURE_CHUNK)])

    def set_prompt_bank(self, x: torch.Tensor) -> None:
        """Store the normal training images Tensor[N, 3, S, S] in [0, 1] (as uint8) and their prompt features."""
        self.prompt_images = to_uint8(x).to(self.device)
        self.prompt_features = self.prompt_feature(self.prompt_images.float() / 255.0)

    def prompts(self, index: torch.Tensor) -> torch.Tensor:
        """Prompt images of bank rows ``index`` as Tensor[B, 3, S, S] in [-1, 1]."""
        return self.prompt_images[index.to(self.device)].float() / 127.5 - 1.0

    def recover_images(self, h_map: torch.Tensor, prompt_index: torch.Tensor | None) -> torch.Tensor:
        """Y = HIP(H, X⁺) (or HIP(H) with ``prompt="free"``, where ``prompt_index`` is None): Tensor[B, 3, S, S] in [-1, 1]."""
        prompt = None if prompt_index is None else self.prompts(prompt_index)
        return self.recover(h_map.to(self.device), prompt)

    def feature_pair(self, x: torch.Tensor, y: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """F_X (frozen backbone on X in [0, 1], no grad) and F_Y from Y in [-1, 1]: the student on the frozen
        backbone's features of Y (``frb=True``) or the learnable extractor on Y itself (``frb=False``)."""
        y = (y + 1.0) / 2.0
        with torch.no_grad():
            feats_x = self.backbone.features(x.to(self.device))
            student_input = self.backbone.features(y) if self.config.frb else y
        return feats_x, self.student(student_input)

    # ----------------------------------------------------------------- training

    def recovery_loss(self, x: torch.Tensor, h_map: torch.Tensor, prompt_index: torch.Tensor | None) -> torch.Tensor:
        """Stage-1 loss of one batch: L2 + λ_M·MSGMS between X (Tensor[B, 3, S, S] in [0, 1], mapped to [-1, 1])
        and Y = HIP(H, X⁺)."""
        y = self.recover_images(h_map, prompt_index)
        return recovery_loss(x.to(self.device) * 2.0 - 1.0, y, self.config.msgms_weight)

    def discrimination_loss(self, x: torch.Tensor, h_map: torch.Tensor, prompt_index: torch.Tensor | None) -> torch.Tensor:
        """Stage-2 loss of one batch: L_D + λ_S·L_S between F_X and F_Y, with Y from the frozen HIP (no grad)."""
        with torch.no_grad():
            y = self.recover_images(h_map, prompt_index)
        feats_x, feats_y = self.feature_pair(x, y)
        return discrimination_loss(feats_x, feats_y, self.config.self_corr_weight)

    def _fit(
        self,
        images: ImageInput | Sequence[ImageInput],
        checkpoint_dir: str | os.PathLike | None = None,
        resume: bool = True,
        progress: bool = True,
        stages: Sequence[int] = (1, 2),
    ) -> None:
        """Train on normal images: stage 1 (recover network), then stage 2 (discriminate network).

        Args:
            images: at least two normal training images of one category (or of all, for a unified model), or an
                :class:`ad_fast.data.AnomalyDataset` whose normal (label 0) images are used.
            checkpoint_dir: where each stage saves ``redi_stage{1,2}.pt`` after every epoch.
            resume: continue from existing stage checkpoints in ``checkpoint_dir``.
            progress: show tqdm progress bars.
            stages: which stages to run, a subset of (1, 2), e.g. (2,) after loading a stage-1 model.

        ``self.history``: ``{"recover": [mean loss per epoch], "discriminate": [...]}`` for the stages run.
        """
        stages = tuple(stages)
        if not stages or any(s not in (1, 2) for s in stages) or len(set(stages)) != len(stages):
            raise ValueError(f"stages: expected a non-empty subset of (1, 2), got {stages!r}")
        x, _ = self.preprocess(normal_images(images, "images")[0])
        if x.shape[0] < 2:
            raise ValueError(f"images: ReDi needs at least 2 normal training images, got {x.shape[0]}")
        x = to_uint8(x).to(self.device).float() / 255.0
        prompt_index = None
        if self.uses_prompt:  # prompts exclude the image itself
            self.set_prompt_bank(x)
            prompt_index, _ = retrieve_prompts(self.prompt_features, self.prompt_features, exclude=torch.arange(x.shape[0], device=self.device))
        with torch.no_grad():
            h_map = torch.cat([self.generate_map(chunk) for chunk in x.split(_FEATURE_CHUNK)])
        prompts_of = lambda batch: None if prompt_index is None else prompt_index[batch]  # noqa: E731
        history: dict[str, list[float]] = {}
        if 1 in stages:
            self.recover.requires_grad_(True)
            step = lambda batch: self.recovery_loss(x[batch], h_map[batch], prompts_of(batch))  # noqa: E731
            history["recover"] = run_stage(1, self.recover, step, x.shape[0], self.config, checkpoint_dir, resume, progress)
            self._mark_trained(1)
        if 2 in stages:
            self.recover.eval().requires_grad_(False)
            step = lambda batch: self.discrimination_loss(x[batch], h_map[batch], prompts_of(batch))  # noqa: E731
            history["discriminate"] = run_stage(2, self.student, step, x.shape[0], self.config, checkpoint_dir, resume, progress)
            self._mark_trained(2)
        self.eval()
        self.history = history

    def _mark_trained(self, stage: int) -> None:
        self.trained_stages = sorted(set(self.trained_stages) | {stage})

    @classmethod
    def fit_categories(
        cls,
        data: Mapping[str, ImageInput | Sequence[ImageInput]],
        unified: bool = False,
        backbone_weights: str | os.PathLike | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
        progress: bool = True,
        **options,
    ) -> dict[str, "ReDi"]:
        """One model per category (the paper's setting), or with ``unified`` one model trained on the union of
        all categories (its prompt bank holds every category's normal images); returns category → model."""
        if not isinstance(data, Mapping) or not data:
            raise ValueError("data: expected a non-empty mapping category -> normal training images")
        if unified:
            model = cls(backbone_weights=backbone_weights, **options)
            images = [img for value in data.values() for img in to_image_batch(value)[0]]
            model.fit(images, checkpoint_dir=checkpoint_dir, progress=progress)
            return {category: model for category in data}
        models = {}
        for category, images in data.items():
            model = cls(backbone_weights=backbone_weights, **options)
            sub_dir = None if checkpoint_dir is None else os.path.join(checkpoint_dir, str(category))
            model.fit(images, checkpoint_dir=sub_dir, progress=progress)
            models[category] = model
        return models

    # ----------------------------------------------------------------- inference

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Tensor[B, 3, S, S] in [0, 1] → anomaly_map [B, 1, S, S], pred_score [B], recovered [B, 3, S, S] in [0, 1]
        and, with a prompt (``prompt="pretrained"``), prompt_index [B] and prompt_similarity [B]."""
        x = x.to(self.device)
        out: dict[str, torch.Tensor] = {}
        prompt_index = None
        if self.uses_prompt:
            prompt_index, similarity = retrieve_prompts(self.prompt_feature(x), self.prompt_features)
            out.update(prompt_index=prompt_index, prompt_similarity=similarity)
        y = self.recover_images(self.generate_map(x), prompt_index)
        feats_x, feats_y = self.feature_pair(x, y)
        sigma = self.config.blur_sigma or None
        amap, score = anomaly_map(
            feats_x, feats_y, self.config.img_size, metric="cosine", reduce="sum", blur_sigma=sigma, return_score=True
        )
        return {"anomaly_map": amap, "pred_score": score, **out, "recovered": (y + 1.0) / 2.0}

    def _predict_batch(self, items: list, resize_to_input: bool = False,
                       return_recovered: bool = False) -> AnomalyResult:
        """Anomaly maps and scores of one batch of test images (resized to ``img_size``).

        Args:
            resize_to_input: resize the maps back to the input size (all inputs must share one size).
            return_recovered: put the recovered images Y (Tensor[B, 3, S, S] in [0, 1]) into ``extras``.
        Returns:
            :class:`AnomalyResult` with anomaly_map [B, 1, S, S] (or the input size), pred_score [B] and, with a
            prompt, extras ``prompt_index`` / ``prompt_similarity`` (the training image used as prompt).
        """
        ready = self.prompt_features.shape[0] > 0 if self.uses_prompt else bool(self.trained_stages)
        if not ready:
            what = "no prompt bank" if self.uses_prompt else "no trained stage"
            raise RuntimeError(f"ReDi.predict: the model has {what} yet; call fit() or load() first")
        x, sizes = self.preprocess(items)
        if resize_to_input and len(set(sizes)) != 1:
            raise ValueError(f"resize_to_input: inputs have different sizes {sorted(set(sizes))}; predict them separately")
        was_training = self.training
        self.eval()
        try:
            out = self(x)
        finally:
            self.train(was_training)
        extras = {key: out[key] for key in ("prompt_index", "prompt_similarity") if key in out}
        if return_recovered:
            extras["recovered"] = out["recovered"]
        result = AnomalyResult(out["anomaly_map"].float(), out["pred_score"].float(), extras=extras)
        return result.resized(sizes[0]) if resize_to_input else result

    # ----------------------------------------------------------------- model file

    def _state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Every weight and the prompt bank (``prompt_images`` uint8, ``prompt_features``); the trained stages."""
        return dict(self.state_dict()), {"trained_stages": list(self.trained_stages)}

    def _restore(self, tensors: dict[str, torch.Tensor], state: dict, mmap: bool) -> None:
        for name in ("prompt_images", "prompt_features"):
            if name not in tensors:
                raise ValueError(f"path: the ReDi file lacks the tensor {name!r}")
            setattr(self, name, torch.empty_like(tensors[name]))
        load_state_dict_strict(self, tensors, "ReDi", assign=mmap)
        self.trained_stages = [int(s) for s in state.get("trained_stages", [])]
