"""OneNIP: unified multi-class anomaly detection by reconstructing a query's features from one normal image prompt."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ...data import ImageInput, to_image_batch
from ...data.images import resize_image
from ...results import AnomalyResult
from ..base import Detector
from ..components.imagenet import IMAGENET_MEAN, IMAGENET_STD
from ..components.inputs import as_item_list
from ..components.retrieval import PromptBank
from ..components.weights import load_state_dict_strict
from ..registry import register_model, saved_method
from . import scoring, weights
from .backbone import FEATURE_STRIDE, OneNIPBackbone, fuse_features
from .config import OneNIPConfig
from .reconstruction import Reconstruction
from .training import fit as train_onenip
from .transformer import RELEASE_DECODER_VARIANTS

_POOL_KEY = "prompt_pool.features"
_DECODER_PREFIX = "reconstruction.transformer.decoder."


@register_model("onenip")
class OneNIP(Detector):
    """OneNIP (Gao, ECCV 2024) with the release's architecture, scoring and checkpoint layout.

    Args:
        img_size: side S images are resized to (release: 224, 256 or 320); a multiple of 16, at least 32.
        backbone: ``"efficientnet_b4"`` (frozen; block outputs 1/5/9/21 fused to 272 channels at stride 16).
        alpha: weight of the refiner map in ``(1 - alpha) · S_rec + alpha · kappa · M_hat`` (release 0.5).
        decoder_variant: the bidirectional prompt/target decoder ``"v2_fixed"`` (release HEAD, default) or
            ``"v1_paper"`` (its first version, behind the paper's numbers); or, for the Tab. 4a ablations only (no
            release checkpoint holds them), ``"uniad_query"``: UniAD's layer-wise query decoder, a learned ``[N, d]``
            query per block attends to the fixed encoded target and then to the previous block's output, no prompt
            (Eq. 1); ``"unidirectional"``: the same blocks with the encoded prompt as the query of every block
            (static prompt, Eq. 2).
        hidden_dim, heads, ffn_dim, encoder_depth, decoder_depth, dropout: transformer sizes (256, 8, 1024, 4, 4, 0.1).
        neighbour: ``(n_h, n_w)`` of the neighbour mask; default ``(h // 2, w // 2)`` as the release.
        avgpool_size: side of the average pooling before the image-score max (release 16).
        kappa: normalising constant of the refiner map (set by ``fit`` / :meth:`calibrate`; see ``scoring``).

    The prompt pool (normal images per class, as stride-16 features) is filled by ``fit`` or :meth:`set_prompts`
    and saved with the model; ``predict`` picks each query's prompt from it by cosine similarity.
    """

    Config = OneNIPConfig

    def __init__(self, img_size: int = 256, backbone: str = "efficientnet_b4", alpha: float = 0.5,
                 decoder_variant: str = "v2_fixed", hidden_dim: int = 256, heads: int = 8, ffn_dim: int = 1024,
                 encoder_depth: int = 4, decoder_depth: int = 4, dropout: float = 0.1,
                 neighbour: Sequence[int] | None = None, avgpool_size: int = 16, kappa: float | None = None):
        super().__init__()
        OneNIPConfig(img_size=img_size, backbone=backbone, alpha=alpha, avgpool_size=avgpool_size)  # checks them
        self.img_size, self.backbone_name, self.alpha = img_size, backbone, float(alpha)
        self.avgpool_size = avgpool_size
        self.kappa = None if kappa is None else float(kappa)
        self.feature_size = (img_size // FEATURE_STRIDE, img_size // FEATURE_STRIDE)
        self._arch = dict(decoder_variant=decoder_variant, hidden_dim=hidden_dim, heads=heads, ffn_dim=ffn_dim,
                          encoder_depth=encoder_depth, decoder_depth=decoder_depth, dropout=dropout,
                          neighbour=None if neighbour is None else [int(n) for n in neighbour])
        self.backbone = OneNIPBackbone()
        self.reconstruction = Reconstruction(self.feature_size, hidden_dim, heads, ffn_dim, encoder_depth,
                                             decoder_depth, dropout, decoder_variant,
                                             None if neighbour is None else tuple(neighbour))
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("prompt_features", torch.empty(0, 272, *self.feature_size), persistent=False)
        self.prompt_labels: list[str | None] = []
        self.history: dict[str, list] = {}

    # ------------------------------------------------------------------------------------------ config / I/O
    @property
    def input_size(self) -> tuple[int, int]:
        return (self.img_size, self.img_size)

    @property
    def config(self) -> OneNIPConfig:
        """The constructor arguments that define this model (with the calibrated ``kappa``)."""
        return OneNIPConfig(img_size=self.img_size, backbone=self.backbone_name, alpha=self.alpha,
                            avgpool_size=self.avgpool_size, kappa=self.kappa, **self._arch)

    def load_release_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> "OneNIP":
        """Load the release's ``ckpt.pkl`` state_dict (``module.`` prefixes, lukemelas backbone names) strictly."""
        self._load_strict(weights.release_to_adfast(state_dict), "release OneNIP state_dict")
        return self

    def _load_strict(self, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
        """Strict load; when the decoder's keys differ, the error also names ``decoder_variant``.

        Raises:
            ValueError: missing, unexpected or misshaped keys.
        """
        try:
            load_state_dict_strict(self, state_dict, source)
        except ValueError as error:
            have = {k for k in state_dict if k.startswith(_DECODER_PREFIX)}
            if have == {k for k in self.state_dict() if k.startswith(_DECODER_PREFIX)}:
                raise
            raise ValueError(f"{error}. The checkpoint's decoder keys differ from those of decoder_variant="
                             f"{self._arch['decoder_variant']!r}: load it with the variant it was trained with "
                             f"(release checkpoints: {' or '.join(map(repr, RELEASE_DECODER_VARIANTS))})") from None

    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The network's weights and the prompt pool (``prompt_pool.features``, labels in the state)."""
        return {**self.state_dict(), _POOL_KEY: self.prompt_features}, {"prompt_labels": self.prompt_labels}

    def _restore(self, tensors: dict[str, torch.Tensor], state: dict[str, Any], mmap: bool) -> None:
        tensors = dict(tensors)
        pool = tensors.pop(_POOL_KEY, None)
        self._load_strict(tensors, "OneNIP model file")
        self._set_pool(pool, state.get("prompt_labels", []), "OneNIP model file")

    def _set_pool(self, pool: torch.Tensor | None, labels: list, source: str) -> None:
        if pool is None or not pool.numel():
            return
        if len(labels) != pool.shape[0] or tuple(pool.shape[1:]) != tuple(self.prompt_features.shape[1:]):
            raise ValueError(f"{source}: prompt pool of shape {tuple(pool.shape)} does not match its "
                             f"{len(labels)} labels or the model's feature size")
        self.prompt_features, self.prompt_labels = pool.to(self.device), list(labels)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, img_size: int | None = None, **overrides: Any) -> "OneNIP":
        """Load the release's ``ckpt.pkl`` / ``ckpt_best.pkl`` or a file written by :meth:`save`.

        Args:
            path: checkpoint file.
            img_size: input side; for release checkpoints it is read from the positional tables (224/256/320).
            overrides: constructor arguments (e.g. ``decoder_variant="v1_paper"`` for the paper's checkpoints,
                ``kappa``).

        Release checkpoints hold no prompt pool and no kappa: call :meth:`set_prompts` and :meth:`calibrate` (or
        pass ``kappa``) before ``predict``.

        Raises:
            FileNotFoundError: no such file. ValueError: not a checkpoint, or keys/shapes do not match.
        """
        if saved_method(path) is not None:
            return cls.load(path, **overrides, **({} if img_size is None else {"img_size": img_size}))
        state_dict, config = weights.read_checkpoint(path)
        config = dict(config or {})
        labels = config.pop("prompt_labels", [])
        config.pop("method", None)
        pool = state_dict.pop(_POOL_KEY, None)
        if weights.is_release_layout(state_dict) and img_size is None and "img_size" not in config:
            row = state_dict.get("module.reconstruction.pos_embed.row_embed.weight",
                                 state_dict.get("reconstruction.pos_embed.row_embed.weight"))
            if row is not None:
                config["img_size"] = int(row.shape[0]) * FEATURE_STRIDE
        if img_size is not None:
            config["img_size"] = img_size
        config.update(overrides)
        model = cls(**config)
        if weights.is_release_layout(state_dict):
            model.load_release_state_dict(state_dict)
        else:
            model._load_strict(state_dict, f"{str(path)!r}")
        model._set_pool(pool, labels, f"{str(path)!r}")
        return model.eval()

    # --------------------------------------------------------------------------------------------- network
    def prepare(self, images: ImageInput | Sequence[ImageInput], name: str = "images") -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """User images → ``[B, 3, S, S]`` in [0, 1] on the model's device (bilinear, antialiased as PIL; the aspect
        ratio is not kept, as in the release) and their original sizes."""
        tensors, sizes = to_image_batch(images, name=name)
        batch = [resize_image(t.to(self.device), self.img_size).clamp(0, 1) for t in tensors]
        return torch.stack(batch), sizes

    def extract(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, S, S]`` in [0, 1] → frozen stride-16 features ``[B, 272, S/16, S/16]`` (no gradient)."""
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (self.img_size, self.img_size):
            raise ValueError(f"images: expected [B, 3, {self.img_size}, {self.img_size}], got {tuple(images.shape)}")
        with torch.no_grad():
            return fuse_features(self.backbone((images - self.pixel_mean) / self.pixel_std))

    def forward(self, features: torch.Tensor, prompt_features: torch.Tensor, jitter: float = 0.0,
                prompt_index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Stride-16 features of targets ``[B, ...]`` and prompts ``[P, ...]`` (target b uses prompt
        ``prompt_index[b]``, default b mod P) → (reconstruction ``[B, 272, h, w]``, refiner logits
        ``[B, 1, 4h, 4w]``)."""
        return self.reconstruction(features, prompt_features, jitter, prompt_index)

    def score_maps(self, features: torch.Tensor, prompt_features: torch.Tensor,
                   prompt_index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """→ (S_rec, M_hat), both ``[B, 1, S, S]``."""
        reconstruction, logits = self(features, prompt_features, prompt_index=prompt_index)
        size = (self.img_size, self.img_size)
        return scoring.reconstruction_map(features, reconstruction, size), scoring.refiner_probability(logits, size)

    # ------------------------------------------------------------------------------------------- prompt pool
    @torch.inference_mode()
    def set_prompts(self, images: ImageInput | Sequence[ImageInput], labels: Sequence[str | None] | None = None,
                    batch_size: int = 16) -> "OneNIP":
        """Replace the prompt pool with normal ``images`` (one or more per class; ``labels`` one per image)."""
        items = list(images) if isinstance(images, (list, tuple)) else [images]
        labels = [None] * len(items) if labels is None else list(labels)
        if len(labels) != len(items):
            raise ValueError(f"labels: expected one label per image ({len(items)}), got {len(labels)}")
        parts = [self.extract(self.prepare(items[i:i + batch_size], "images")[0])
                 for i in range(0, len(items), batch_size)]
        self.prompt_features, self.prompt_labels = torch.cat(parts), labels
        return self

    def retrieve_prompts(self, features: torch.Tensor, label: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Most similar pool prompt per query: cosine of spatially averaged features (:class:`PromptBank`).

        Returns (index Tensor[B] int64 into the pool, similarity Tensor[B]).
        """
        if not self.prompt_labels:
            raise ValueError("prompt pool is empty: fit the model, call set_prompts(normal_images, labels), "
                             "or pass prompt= to predict")
        bank = PromptBank(self.prompt_features.mean(dim=(2, 3)), self.prompt_labels)
        similarity, index = bank.search(features.mean(dim=(2, 3)), 1, label)
        return index[:, 0], similarity[:, 0]

    # ------------------------------------------------------------------------------------------- inference
    def _prompt_features_for(self, features: torch.Tensor, prompt: Any,
                             label: str | None) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
        """→ (distinct prompt features ``[P, ...]``, per-query index into them or None for b mod P, extras)."""
        if prompt is not None:
            prompts = self.extract(self.prepare(prompt, "prompt")[0])
            if prompts.shape[0] not in (1, features.shape[0]):
                raise ValueError(f"prompt: expected 1 or {features.shape[0]} prompts (one per image), "
                                 f"got {prompts.shape[0]}")
            return prompts, None, {}
        index, similarity = self.retrieve_prompts(features, label)
        distinct, inverse = index.cpu().unique(return_inverse=True)  # each pool prompt is encoded once
        prompts = self.prompt_features[distinct].to(self.device)
        return prompts, inverse.to(self.device), {"prompt_index": index, "prompt_similarity": similarity,
                                                  "prompt_label": [self.prompt_labels[i] for i in index.tolist()]}

    @torch.inference_mode()
    def calibrate_kappa(self, images: ImageInput | Sequence[ImageInput], labels: Sequence[str | None] | None = None,
                        batch_size: int = 16) -> float:
        """Set ``kappa`` = mid-range of S_rec over ``images`` (prompts from the pool, restricted to each image's
        class when ``labels`` are given); returns it.

        ``fit`` calls this on normal training images. Passing a whole test set (all classes, anomalies included)
        reproduces the release's transductive constant."""
        items = list(images) if isinstance(images, (list, tuple)) else [images]
        labels = [None] * len(items) if labels is None else list(labels)
        if len(labels) != len(items):
            raise ValueError(f"labels: expected one label per image ({len(items)}), got {len(labels)}")
        low, high = float("inf"), float("-inf")
        for i in range(0, len(items), batch_size):
            batch = items[i:i + batch_size]
            features = self.extract(self.prepare(batch, "images")[0])
            prompts = torch.cat([self._prompt_features_for(features[j:j + 1], None, labels[i + j])[0]
                                 for j in range(len(batch))])
            rec_map, _ = self.score_maps(features, prompts)
            low, high = min(low, float(rec_map.min())), max(high, float(rec_map.max()))
        self.kappa = scoring.kappa_from_range(low, high)
        return self.kappa

    def _batch_options(self, options: dict[str, Any], start: int, stop: int, total: int) -> dict[str, Any]:
        """A prompt per image (as many prompts as images) is split with the images."""
        if options.get("prompt") is None:
            return options
        prompts = as_item_list(options["prompt"], "prompt")
        return {**options, "prompt": prompts[start:stop] if len(prompts) == total > 1 else prompts}

    def _predict_batch(self, images: list, prompt: ImageInput | Sequence[ImageInput] | None = None,
                       *, label: str | None = None, kappa: float | None = None,
                       resize_to_input: bool = False) -> AnomalyResult:
        """Anomaly maps and scores for a batch of ``images``.

        Args:
            prompt: one normal image for every query, or one per query; default: each query's most similar prompt
                in the pool (cosine of averaged features; ``label`` restricts the search to one class).
            kappa: overrides the stored normalising constant.
            resize_to_input: resize the maps to the inputs' size (all inputs must share it).

        Returns:
            AnomalyResult: ``anomaly_map [B, 1, S, S]`` = (1 - alpha)·S_rec + alpha·kappa·M_hat,
            ``pred_score [B]`` = max of its 16x16 average pooling; ``extras``: ``rec_map``, ``refiner_map``
            ``[B, 1, S, S]`` and, with the pool, ``prompt_index``, ``prompt_similarity``, ``prompt_label``.
        """
        kappa = self.kappa if kappa is None else float(kappa)
        if kappa is None:
            raise ValueError("kappa: the model is not calibrated; fit() it, call calibrate_kappa(normal_images) or "
                             "pass kappa=")
        self.eval()
        queries, sizes = self.prepare(images, "images")
        features = self.extract(queries)
        prompts, prompt_index, extras = self._prompt_features_for(features, prompt, label)
        rec_map, probability = self.score_maps(features, prompts, prompt_index)
        amap = scoring.combine(rec_map, probability, self.alpha, kappa)
        result = AnomalyResult(amap, scoring.image_score(amap, self.avgpool_size),
                               extras={"rec_map": rec_map, "refiner_map": probability, **extras})
        if resize_to_input:
            if len(set(sizes)) != 1:
                raise ValueError(f"resize_to_input: the images have different sizes {sorted(set(sizes))}; "
                                 "predict them separately or resize with AnomalyResult.resized")
            result = result.resized(sizes[0])
        return result

    # --------------------------------------------------------------------------------------------- training
    def _fit(self, train_images: Mapping[str, Sequence[ImageInput]] | Any,
             val_images: Mapping[str, Sequence[ImageInput]] | Any | None = None, **options: Any) -> None:
        """Train on normal images of every class (``{class name: [images]}``, an ``ad_fast.data`` dataset, whose
        normal images are used, or a folder: one class); see :func:`ad_fast.models.onenip.training.fit` for
        ``options``. Fills the prompt pool, kappa and ``self.history``."""
        if isinstance(train_images, (str, os.PathLike)):
            train_images = {Path(train_images).name: as_item_list(train_images, "train_images")}
        self.history = train_onenip(self, train_images, val_images, **options)
