"""Prompt pool: normal images (per class or unlabelled) kept as encodings, retrieved per query by cosine (MetaUAS★)."""

from __future__ import annotations

import json
import os
from typing import Sequence

import torch

from torch import nn

from ...checkpoints import read_safetensors, write_safetensors
from ...data import ImageInput
from ..components.retrieval import PromptBank
from .encoding import PromptEncoding

POOL_FORMAT = "ad_fast.MetaUAS.PromptPool"
POOL_FORMAT_VERSION = 1


class PromptPool:
    """Encoded normal prompts: level-3..5 features (the FAM's inputs) and pooled level-5 vectors (the retrieval key).

    Build with :meth:`build` (or :meth:`add`), pass as ``MetaUAS.predict(query, pool=pool, k=...)``. Memory per
    prompt: about 0.5 MB at S = 256 and 2 MB at S = 512 (float32).
    """

    def __init__(self, encoding: PromptEncoding, labels: Sequence[str | None], img_size: int, padding_version: str):
        if len(labels) != len(encoding):
            raise ValueError(f"labels: expected {len(encoding)} labels, got {len(labels)}")
        self.encoding, self.labels = encoding, list(labels)
        self.img_size, self.padding_version = int(img_size), padding_version

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def classes(self) -> list[str]:
        """The distinct non-None labels, sorted."""
        return sorted({label for label in self.labels if label is not None})

    @classmethod
    def build(cls, model: nn.Module, images: ImageInput | Sequence[ImageInput], labels: Sequence[str | None] | None = None,
              batch_size: int = 16) -> "PromptPool":
        """Encode normal ``images`` (with optional class ``labels``, one per image) with ``model``'s encoder."""
        empty = PromptEncoding([], torch.empty(0))
        return cls(empty, [], model.img_size, model.encoder.padding_version).add(model, images, labels, batch_size)

    @torch.inference_mode()
    def add(self, model: nn.Module, images: ImageInput | Sequence[ImageInput], labels: Sequence[str | None] | None = None,
            batch_size: int = 16) -> "PromptPool":
        """Append more normal images (encoded on the model's device, stored on the CPU); returns ``self``."""
        self._check_model(model)
        items = list(images) if isinstance(images, (list, tuple)) else [images]
        labels = [None] * len(items) if labels is None else list(labels)
        if len(labels) != len(items):
            raise ValueError(f"labels: expected one label per image ({len(items)}), got {len(labels)}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        parts = [self.encoding] if len(self) else []
        for start in range(0, len(items), batch_size):
            batch, _ = model.prepare(items[start:start + batch_size], "images")
            parts.append(model.encode_prompt(batch).to(torch.device("cpu")))
        self.encoding = PromptEncoding([torch.cat([p.features[i] for p in parts]) for i in range(3)],
                                       torch.cat([p.pooled for p in parts]))
        self.labels.extend(labels)
        return self

    def _check_model(self, model: nn.Module) -> None:
        if (model.img_size, model.encoder.padding_version) != (self.img_size, self.padding_version):
            raise ValueError(f"pool: built for img_size={self.img_size}, padding_version={self.padding_version!r}, "
                             f"but the model has img_size={model.img_size}, "
                             f"padding_version={model.encoder.padding_version!r}")

    def retrieve(self, pooled: torch.Tensor, k: int = 1, label: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` prompts by cosine similarity of pooled features (:class:`PromptBank`).

        Args:
            pooled (Tensor[B, 448]): queries' pooled level-5 features.
            k: prompts per query. label: search only prompts of this class.

        Returns:
            (similarity Tensor[B, k] float32, index Tensor[B, k] int64 into the pool), most similar first.
        """
        return PromptBank(self.encoding.pooled, self.labels).search(pooled, k, label)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The stored tensors by name (``level3..5``, ``pooled``)."""
        out = {f"level{3 + i}": f.contiguous() for i, f in enumerate(self.encoding.features)}
        out["pooled"] = self.encoding.pooled.contiguous()
        return out

    def metadata(self) -> dict[str, str]:
        """JSON-able description: format, labels, img_size, padding_version (all strings)."""
        return {"format": POOL_FORMAT, "format_version": str(POOL_FORMAT_VERSION), "labels": json.dumps(self.labels),
                "img_size": str(self.img_size), "padding_version": self.padding_version}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict[str, str], source: str = "prompt pool") -> "PromptPool":
        """Inverse of :meth:`tensors` + :meth:`metadata` (``ValueError`` on a wrong format or missing tensors)."""
        if meta.get("format") != POOL_FORMAT or meta.get("format_version") != str(POOL_FORMAT_VERSION):
            raise ValueError(f"{source}: not a {POOL_FORMAT} version {POOL_FORMAT_VERSION}")
        missing = [name for name in ("level3", "level4", "level5", "pooled") if name not in tensors]
        if missing:
            raise ValueError(f"{source}: missing tensors {missing}")
        encoding = PromptEncoding([tensors[f"level{level}"] for level in (3, 4, 5)], tensors["pooled"])
        return cls(encoding, json.loads(meta["labels"]), int(meta["img_size"]), meta["padding_version"])

    def save(self, path: str | os.PathLike) -> None:
        """Write the pool as safetensors (features, pooled vectors) with labels and settings in the metadata,
        atomically (a fitted MetaUAS saves its pool inside its model file)."""
        write_safetensors(path, self.tensors(), self.metadata())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PromptPool":
        """Read a pool written by :meth:`save` (``FileNotFoundError`` / ``ValueError`` on a missing or bad file)."""
        meta, tensors = read_safetensors(path, "prompt pool")
        return cls.from_tensors(tensors, meta, f"{os.fspath(path)!r}")
