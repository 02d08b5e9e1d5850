"""MetaUAS: universal anomaly segmentation as change segmentation between a normal prompt and a query image."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ...data import ImageInput
from ...results import AnomalyResult
from ..base import Detector, prefixed
from ..components.weights import load_state_dict_strict
from ..components.imagenet import IMAGENET_MEAN, IMAGENET_STD
from ..components.inputs import normal_images
from ..registry import register_model, saved_method
from . import weights
from .alignment import FeatureAlignment
from .config import MetaUASConfig
from .decoder import DECODER_CHANNELS, UnetDecoder
from ..components.efficientnet_b4 import LEVEL_CHANNELS, EfficientNetB4Encoder
from .encoding import PromptEncoding, image_scores
from .pool import PromptPool
from .preprocess import prepare_images

ALIGNED_LEVELS = 3  # F3, F4, F5
_POOL_PREFIX = "prompt_pool."


def _release_img_size(path: str | os.PathLike) -> int:
    """The side an official checkpoint was trained at, from its release name (``metauas-256.ckpt`` /
    ``metauas-512.ckpt``); the file itself records none, so any other name must be told ``img_size``."""
    match = re.fullmatch(r"metauas-(256|512)\.ckpt", Path(path).name)
    if match is None:
        raise ValueError(f"img_size: {str(path)!r} records no image size; pass img_size= the side it was trained at "
                         "(256 for the release's metauas-256.ckpt, 512 for metauas-512.ckpt)")
    return int(match.group(1))


@register_model("metauas")
class MetaUAS(Detector):
    """MetaUAS (Gao, NeurIPS 2024) with the official release's architecture, numerics and checkpoint layout.

    Args:
        img_size: side S the images are resized to (the release: 256 or 512); a multiple of 32.
        alignment: ``"soft"`` (release), ``"hard"`` or ``"none"``.
        fusion: ``"cat"`` (release), ``"add"`` or ``"absdiff"``.
        padding_version: efficientnet-pytorch padding of block 6, ``"0.6.3"`` (default) or ``"0.7"``.
        threshold: anomaly-map threshold for ``pred_mask``.
        weights: optional checkpoint to load (official layout or ad_fast's; e.g. ``metauas-256.ckpt``).
        k: prompts retrieved per query from the pool built by :meth:`fit` (maps averaged).

    ``forward(query, prompt)`` takes ``[B, 3, S, S]`` RGB in [0, 1] (ImageNet normalisation happens inside) and
    returns the anomaly map ``[B, 1, S, S]`` in [0, 1], exactly as the release's model.
    """

    Config = MetaUASConfig
    input_name = "query"

    def __init__(self, img_size: int = 256, alignment: str = "soft", fusion: str = "cat",
                 padding_version: str = "0.6.3", threshold: float = 0.5, weights: str | os.PathLike | None = None,
                 k: int = 1):
        super().__init__()
        MetaUASConfig(img_size=img_size, threshold=threshold, k=k)  # checks them
        self.img_size, self.threshold = img_size, float(threshold)
        self.encoder = EfficientNetB4Encoder(padding_version)
        # Index 0 acts on F5, 1 on F4, 2 on F3 (the release's order).
        self.alignment = nn.ModuleList(FeatureAlignment(c, alignment, fusion) for c in LEVEL_CHANNELS[:1:-1])
        factor = self.alignment[0].out_channels_factor
        level_channels = tuple(LEVEL_CHANNELS[:2]) + tuple(factor * c for c in LEVEL_CHANNELS[2:])
        self.decoder = UnetDecoder(level_channels)
        self.mask_head = nn.Conv2d(DECODER_CHANNELS[-1], 1, 1)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._prompt_cache: tuple[str, PromptEncoding] | None = None
        self.k, self.pool = k, None
        if weights is not None:
            self.load_weights(weights)
        self.eval()

    # ----------------------------------------------------------------------------------------------- config / I/O
    @property
    def input_size(self) -> tuple[int, int]:
        return (self.img_size, self.img_size)

    @property
    def config(self) -> MetaUASConfig:
        """The constructor arguments that define this model."""
        return MetaUASConfig(img_size=self.img_size, alignment=self.alignment[0].alignment,
                             fusion=self.alignment[0].fusion, padding_version=self.encoder.padding_version,
                             threshold=self.threshold, k=self.k)

    def _moved(self, device: torch.device) -> None:
        """``.to()`` also moves the prompt pool and the cached prompt encoding."""
        if self.pool is not None:
            self.pool.encoding = self.pool.encoding.to(device)
        if self._prompt_cache is not None:
            self._prompt_cache = (self._prompt_cache[0], self._prompt_cache[1].to(device))

    def load_official_state_dict(self, state_dict: dict[str, torch.Tensor]) -> "MetaUAS":
        """Load a state_dict in the official release's key layout strictly (see ``weights`` for the mapping)."""
        load_state_dict_strict(self, weights.official_to_adfast(state_dict), "official MetaUAS state_dict")
        self._prompt_cache = None
        return self

    def official_state_dict(self) -> dict[str, torch.Tensor]:
        """This model's weights in the official release's key layout (loadable by the release's code)."""
        return weights.adfast_to_official(self.state_dict())

    def load_weights(self, path: str | os.PathLike) -> "MetaUAS":
        """Load only the network weights of a checkpoint (official layout or ad_fast's), strictly."""
        state_dict, _ = weights.read_checkpoint(path)
        if weights.is_official_layout(state_dict):
            return self.load_official_state_dict(state_dict)
        network = {k: v for k, v in state_dict.items() if not k.startswith(_POOL_PREFIX)}
        load_state_dict_strict(self, network, f"{str(path)!r}")
        self._prompt_cache = None
        return self

    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The network's weights and the pool built by :meth:`fit` (``prompt_pool.*``, labels in the state)."""
        tensors = dict(self.state_dict())
        if self.pool is None:
            return tensors, {}
        tensors.update({_POOL_PREFIX + name: t for name, t in self.pool.tensors().items()})
        return tensors, {"prompt_pool": self.pool.metadata()}

    def _restore(self, tensors: dict[str, torch.Tensor], state: dict[str, Any], mmap: bool) -> None:
        network = {k: v for k, v in tensors.items() if not k.startswith(_POOL_PREFIX)}
        load_state_dict_strict(self, network, "MetaUAS", assign=mmap)
        if state.get("prompt_pool") is not None:
            self.pool = PromptPool.from_tensors(prefixed(tensors, _POOL_PREFIX), state["prompt_pool"])
        self._prompt_cache = None

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, img_size: int | None = None, **overrides: Any) -> "MetaUAS":
        """Load the official checkpoints (``metauas-256.ckpt``, ``metauas-512.ckpt``, plain state_dicts), a model
        file written by :meth:`save`, or a file of ad_fast 0.1's MetaUAS format.

        Args:
            path: checkpoint file.
            img_size: input side; for official checkpoints pass 512 for ``metauas-512.ckpt`` (default 256, or the
                saved config's value for ad_fast files).
            overrides: other constructor arguments (e.g. ``padding_version="0.7"``, ``threshold``).

        Raises:
            FileNotFoundError: no such file. ValueError: not a checkpoint, or keys/shapes do not match.
        """
        if img_size is not None:
            overrides["img_size"] = img_size
        if saved_method(path) is not None:
            return cls.load(path, **overrides)
        state_dict, config = weights.read_checkpoint(path)
        config = dict(config or {})
        config.pop("method", None)
        pool_meta = config.pop("prompt_pool", None)
        config.update(overrides)
        if "img_size" not in config:
            config["img_size"] = _release_img_size(path)
        model = cls(**config)
        if weights.is_official_layout(state_dict):
            model.load_official_state_dict(state_dict)
        else:
            network = {k: v for k, v in state_dict.items() if not k.startswith(_POOL_PREFIX)}
            load_state_dict_strict(model, network, f"{str(path)!r}")
            if pool_meta is not None:
                model.pool = PromptPool.from_tensors(prefixed(state_dict, _POOL_PREFIX), pool_meta)
        return model.eval()

    # ------------------------------------------------------------------------------------------------ network
    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        """``[B, 3, S, S]`` in [0, 1] → encoder features ``[F1..F5]`` (frozen, no gradient)."""
        with torch.no_grad():
            return self.encoder((images - self.pixel_mean) / self.pixel_std)

    def encode_prompt(self, images: torch.Tensor) -> PromptEncoding:
        """``[P, 3, S, S]`` in [0, 1] → the prompts' level-3..5 features and pooled level-5 vectors."""
        features = self.encode(images)[2:]
        return PromptEncoding(features, features[-1].mean(dim=(2, 3)))

    def decode(self, query_features: list[torch.Tensor], prompt: PromptEncoding) -> torch.Tensor:
        """Align, fuse and decode → logits ``[B, 1, S, S]``.

        ``prompt.features[l]`` is ``[B, C, h, w]`` (one prompt per query) or ``[B, P, C, h, w]`` (one attention
        over P prompts per query).
        """
        fused = list(query_features[:2])
        for level in range(ALIGNED_LEVELS):
            align = self.alignment[ALIGNED_LEVELS - 1 - level]
            fused.append(align(query_features[2 + level], prompt.features[level]))
        return self.mask_head(self.decoder(fused))

    def forward_logits(self, query: torch.Tensor, prompt: torch.Tensor | PromptEncoding) -> torch.Tensor:
        """query ``[B, 3, S, S]`` in [0, 1]; prompt ``[B or 1, 3, S, S]`` or its encoding → logits ``[B, 1, S, S]``."""
        encoding = prompt if isinstance(prompt, PromptEncoding) else self.encode_prompt(prompt)
        batch, prompts = query.shape[0], encoding.pooled.shape[0]
        if prompts != batch:  # shapes, not len(): a symbolic batch (ONNX export) stays symbolic
            if prompts != 1:
                raise ValueError(f"prompt: expected 1 or {batch} prompts (one per query), got {prompts}")
            encoding = PromptEncoding([f.expand(batch, -1, -1, -1) for f in encoding.features],
                                      encoding.pooled.expand(batch, -1))
        return self.decode(self.encode(query), encoding)

    def forward(self, query: torch.Tensor, prompt: torch.Tensor | PromptEncoding) -> torch.Tensor:
        """The release's forward: anomaly map ``[B, 1, S, S]`` in [0, 1] for query/prompt ``[B, 3, S, S]`` in [0, 1]."""
        return self.forward_logits(query, prompt).sigmoid()

    def export_onnx(self, path: str | os.PathLike, *, img_size: int | None = None, batch_size: int | None = None,
                    opset: int | None = None) -> Path:
        """``export(path, "onnx", ...)`` under its earlier name."""
        return self.export(path, "onnx", img_size=img_size, batch_size=batch_size, opset=opset)

    # ---------------------------------------------------------------------------------------------- inference
    def prepare(self, images: ImageInput | Sequence[ImageInput], name: str = "images") -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """User images → ``[B, 3, S, S]`` in [0, 1] on the model's device, and their original sizes."""
        return prepare_images(images, self.img_size, name, self.device)

    def prompt_encoding(self, prompt: ImageInput | Sequence[ImageInput] | PromptEncoding) -> PromptEncoding:
        """Encode prompt images, reusing the last encoding when the (resized) pixels are unchanged."""
        if isinstance(prompt, PromptEncoding):
            return prompt.to(self.device)
        images, _ = self.prepare(prompt, "prompt")
        digest = hashlib.blake2b(images.detach().cpu().numpy().tobytes(), digest_size=16).hexdigest()
        if self._prompt_cache is None or self._prompt_cache[0] != digest:
            self._prompt_cache = (digest, self.encode_prompt(images))
        return self._prompt_cache[1]

    def train(self, mode: bool = True) -> "MetaUAS":
        self._prompt_cache = None  # weights may change while training
        return super().train(mode)

    def _fit(self, dataset: Any, batch_size: int = 16) -> None:
        """Build the prompt pool (MetaUAS★) from normal images: an ``ad_fast.data.AnomalyDataset`` (its normal
        images, labelled by category), a folder or any image list. ``predict(images)`` without a prompt then
        retrieves from it."""
        images, labels = normal_images(dataset, "dataset")
        self.pool = PromptPool.build(self, images, labels, batch_size=batch_size)

    def predict(self, images: ImageInput | Sequence[ImageInput],
                prompt: ImageInput | Sequence[ImageInput] | PromptEncoding | None = None, *,
                batch_size: int | None = None, **options: Any) -> AnomalyResult:
        """:meth:`ad_fast.Detector.predict` with the prompt as the second argument (as the release's API);
        ``options``: see :meth:`_predict_batch`."""
        return super().predict(images, batch_size, prompt=prompt, **options)

    def predict_iter(self, images: ImageInput | Sequence[ImageInput],
                     prompt: ImageInput | Sequence[ImageInput] | PromptEncoding | None = None, *,
                     batch_size: int | None = None, **options: Any):
        """:meth:`ad_fast.Detector.predict_iter` with the prompt as the second argument."""
        return super().predict_iter(images, batch_size, prompt=prompt, **options)

    def _predict_batch(self, query: list,
                       prompt: ImageInput | Sequence[ImageInput] | PromptEncoding | None = None, *,
                       pool: "PromptPool | None" = None, k: int | None = None, label: str | None = None,
                       resize_to_input: bool = False) -> AnomalyResult:
        """Segment anomalies of ``query`` images against normal prompt(s).

        Args:
            query: images (paths, PIL, arrays, tensors ``[C, H, W]`` / ``[B, C, H, W]``, lists), any size,
                grayscale or colour.
            prompt: one normal image for all queries, or several (then each query's map is the mean of its maps
                against every prompt: k-shot), or a :class:`PromptEncoding`. Encoded once and cached.
            pool: a :class:`PromptPool` to retrieve each query's ``k`` most similar prompts from (MetaUAS★), instead
                of ``prompt``; ``label`` restricts the search to one class. Without prompt and pool, the pool built
                by :meth:`fit` is used.
            k: number of retrieved prompts whose maps are averaged (with a pool; default: the model's ``k``).
            resize_to_input: resize maps back to the queries' original size (all queries must share it).

        Returns:
            AnomalyResult: ``anomaly_map [B, 1, S, S]`` in [0, 1] (or the input size), ``pred_score [B]`` = map
            maximum, ``pred_mask`` = map >= ``threshold``; with a pool, ``extras["prompt_indices"] [B, k]`` and
            ``extras["prompt_similarity"] [B, k]``.
        """
        if prompt is None and pool is None:
            pool = self.pool
        if (prompt is None) == (pool is None):
            raise ValueError("predict: pass exactly one of prompt (normal image(s)) or pool (a PromptPool), "
                             "or fit() a pool first")
        k = self.k if k is None else k
        queries, sizes = self.prepare(query, "query")
        query_features = self.encode(queries)
        batch, extras = queries.shape[0], {}
        if pool is not None:
            pool._check_model(self)
            similarity, index = pool.retrieve(query_features[-1].mean(dim=(2, 3)), k=k, label=label)
            encoding = pool.encoding.select(index.to(pool.encoding.pooled.device)).to(self.device)  # [B, k, ...]
            extras.update(prompt_indices=index, prompt_similarity=similarity)
        else:
            encoding = self.prompt_encoding(prompt)
            encoding = PromptEncoding([f.unsqueeze(0).expand(batch, *f.shape) for f in encoding.features],
                                      encoding.pooled.unsqueeze(0).expand(batch, -1, -1))
        maps = self._mean_map_over_prompts(query_features, encoding)
        result = AnomalyResult(maps, image_scores(maps), extras=extras).threshold(self.threshold)
        if resize_to_input:
            if len(set(sizes)) != 1:
                raise ValueError(f"resize_to_input: the queries have different sizes {sorted(set(sizes))}; "
                                 "predict them separately or resize the maps with AnomalyResult.resized")
            result = result.resized(sizes[0]).threshold(self.threshold)
        return result

    def _mean_map_over_prompts(self, query_features: list[torch.Tensor], encoding: PromptEncoding) -> torch.Tensor:
        """query features (batch B) and ``[B, P, ...]`` prompt features → mean over P of the maps ``[B, 1, S, S]``."""
        batch, prompts = encoding.pooled.shape[:2]
        repeated = [f.repeat_interleave(prompts, dim=0) for f in query_features]
        if prompts == 1:  # a view, no copy of a prompt shared by the whole batch
            flat = PromptEncoding([f[:, 0] for f in encoding.features], encoding.pooled[:, 0])
        else:
            flat = PromptEncoding([f.flatten(0, 1) for f in encoding.features], encoding.pooled.flatten(0, 1))
        maps = self.decode(repeated, flat).sigmoid()
        return maps.unflatten(0, (batch, prompts)).mean(dim=1)

    @torch.inference_mode()
    def predict_pairs(self, query: ImageInput | Sequence[ImageInput],
                      prompt: ImageInput | Sequence[ImageInput]) -> AnomalyResult:
        """Element-wise pairs, as the release's batched evaluation: map i compares query i with prompt i."""
        queries, _ = self.prepare(query, "query")
        prompts, _ = self.prepare(prompt, "prompt")
        if prompts.shape[0] != queries.shape[0]:
            raise ValueError(f"prompt: expected {queries.shape[0]} prompts (one per query), got {prompts.shape[0]}")
        maps = self(queries, prompts)
        return AnomalyResult(maps, image_scores(maps)).threshold(self.threshold)

