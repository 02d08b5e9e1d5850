"""Synthetic change pairs for training MetaUAS from ordinary images (paper §3.3).

Each sample is ``(prompt, query, mask)``: with probability ``object_prob`` (when instance masks are known) an
object-level change (the instances of another image pasted in: appearance; with roles swapped: disappearance),
otherwise a local-region change (a DRAEM Perlin-noise mask, ``ad_fast.synthesis.perlin_mask``, filled from
another image). Roles are assigned at
random, then both views are augmented independently (``augment.py``); the mask is in the query's frame.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ...data import load_image
from ...data.readers import IMAGE_EXTENSIONS, list_images
from ...synthesis import perlin_mask
from .augment import AugmentConfig, augment_pair
from .preprocess import resize_square



def _read_instance_masks(path: Path, size: int) -> torch.Tensor:
    """A label image (0 = background, each other value one instance) → ``[K, size, size]`` boolean."""
    from PIL import Image

    with Image.open(path) as img:
        labels = torch.from_numpy(np.asarray(img.convert("L"), dtype=np.int64))
    ids = [v for v in labels.unique().tolist() if v != 0]
    if not ids:
        return torch.zeros(0, size, size, dtype=torch.bool)
    masks = torch.stack([(labels == v).float() for v in ids]).unsqueeze(1)
    return resize_square(masks, size).squeeze(1) > 0.5


def _coco_instance_masks(coco_json: str | os.PathLike, root: Path) -> dict[str, list[list[list[float]]]]:
    """COCO annotations → {image path: [polygon lists per instance]} (polygon segmentations only)."""
    with open(coco_json) as handle:
        coco = json.load(handle)
    files = {image["id"]: str(root / image["file_name"]) for image in coco.get("images", [])}
    out: dict[str, list] = {}
    for ann in coco.get("annotations", []):
        if isinstance(ann.get("segmentation"), list) and ann["segmentation"] and ann.get("image_id") in files:
            out.setdefault(files[ann["image_id"]], []).append(ann["segmentation"])
    return out


def _rasterise(polygons: list[list[list[float]]], height: int, width: int, size: int) -> torch.Tensor:
    from PIL import Image, ImageDraw

    masks = []
    for instance in polygons:
        canvas = Image.new("L", (width, height), 0)
        for polygon in instance:
            if len(polygon) >= 6:
                ImageDraw.Draw(canvas).polygon(polygon, fill=1)
        masks.append(torch.from_numpy(np.asarray(canvas, dtype=np.float32)))
    return resize_square(torch.stack(masks).unsqueeze(1), size).squeeze(1) > 0.5


class ChangePairDataset(Dataset):
    """Synthetic ``{"prompt", "query": [3, S, S] in [0, 1], "mask": [1, S, S] in {0, 1}}`` training triples.

    Args:
        images: image paths / tensors ``[3, H, W]`` in [0, 1], or one folder (searched recursively).
        img_size: side S.
        mask_dir: folder of instance label images named like the images (same stem, any image suffix).
        coco_json: COCO annotation file (polygon instances), ``file_name`` relative to the image folder.
        object_prob: probability of an object-level change when the image has instances (paper: 0.5).
        blend_max: local changes blend ``(1 - beta) src + beta img`` with beta ~ U(0, blend_max) (default 0: fill).
        augment: paired augmentation (``None`` disables). seed: base seed; sample i is reproducible.
    """

    def __init__(self, images: Sequence[str | os.PathLike | torch.Tensor] | str | os.PathLike, img_size: int = 256,
                 mask_dir: str | os.PathLike | None = None, coco_json: str | os.PathLike | None = None,
                 object_prob: float = 0.5, blend_max: float = 0.0, augment: AugmentConfig | None = AugmentConfig(),
                 seed: int = 0):
        root = None
        if isinstance(images, (str, os.PathLike)):
            root = Path(images)
            if not root.is_dir():
                raise FileNotFoundError(f"images: folder not found: {str(root)!r}")
            images = [str(p) for p in list_images(root, recursive=True)]
        self.images = list(images)
        if len(self.images) < 2:
            raise ValueError(f"images: need at least two images to make change pairs, got {len(self.images)}")
        if not isinstance(img_size, int) or img_size < 32 or img_size % 32:
            raise ValueError(f"img_size: expected a positive multiple of 32, got {img_size!r}")
        if not 0.0 <= object_prob <= 1.0 or not 0.0 <= blend_max <= 1.0:
            raise ValueError("object_prob and blend_max: expected values in [0, 1]")
        self.img_size, self.object_prob, self.blend_max = img_size, object_prob, blend_max
        self.augment, self.seed = augment, seed
        self.mask_dir = Path(mask_dir) if mask_dir is not None else None
        if self.mask_dir is not None and not self.mask_dir.is_dir():
            raise FileNotFoundError(f"mask_dir: folder not found: {str(self.mask_dir)!r}")
        self.coco = {}
        if coco_json is not None:
            if root is None:
                raise ValueError("coco_json: pass the image folder as images so that file names can be resolved")
            self.coco = _coco_instance_masks(coco_json, root)

    def __len__(self) -> int:
        return len(self.images)

    def _image(self, index: int) -> torch.Tensor:
        item = self.images[index]
        if isinstance(item, torch.Tensor):
            image = item.float()
        else:
            image = torch.from_numpy(load_image(item)).permute(2, 0, 1).float().div(255.0)
        return resize_square(image.unsqueeze(0), self.img_size)[0]

    def _instances(self, index: int) -> torch.Tensor:
        """``[K, S, S]`` boolean instance masks of image ``index`` (K = 0 when unknown)."""
        item = self.images[index]
        empty = torch.zeros(0, self.img_size, self.img_size, dtype=torch.bool)
        if isinstance(item, torch.Tensor):
            return empty
        if self.mask_dir is not None:
            for suffix in IMAGE_EXTENSIONS:
                candidate = self.mask_dir / (Path(item).stem + suffix)
                if candidate.is_file():
                    return _read_instance_masks(candidate, self.img_size)
        if str(item) in self.coco:
            from PIL import Image

            with Image.open(item) as img:
                width, height = img.size
            return _rasterise(self.coco[str(item)], height, width, self.img_size)
        return empty

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng((self.seed, index))
        base = self._image(index)
        other_index = (index + 1 + int(rng.integers(0, len(self) - 1))) % len(self)
        other = self._image(other_index)
        instances = self._instances(other_index) if self.object_prob > 0 else None
        use_object = instances is not None and len(instances) > 0 and rng.random() < self.object_prob
        if use_object:  # paste a random non-empty subset of the other image's instances
            keep = torch.from_numpy(rng.random(len(instances)) < 0.5)
            keep[int(rng.integers(0, len(instances)))] = True
            mask = instances[keep].any(dim=0, keepdim=True).float()
            fill = other
        else:
            mask = perlin_mask((self.img_size, self.img_size), rng)  # DRAEM: 2^(0..5) cells, ±90°, > 0.5
            beta = self.blend_max * rng.random()
            fill = (1 - beta) * other + beta * base
        changed = base * (1 - mask) + fill * mask
        prompt, query = (base, changed) if rng.random() < 0.5 else (changed, base)
        if self.augment is not None:
            prompt, query, mask = augment_pair(prompt, query, mask, self.augment, rng)
        return {"prompt": prompt, "query": query, "mask": mask}
