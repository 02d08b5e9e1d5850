"""A small generated anomaly dataset in the MVTec AD layout, for the demo and the tests (no downloads).

Normal images are crops of real textures that ship inside scikit-image (``brick``, ``gravel``, ``grass``; CC0, from
cc0textures.com) and of a procedural colour texture; test images carry synthetic defects with exact masks:
``scratch`` (a thin curved line), ``stain`` (a DRAEM-style texture blended inside a Perlin blob) and ``patch``
(CutPaste: a colour-jittered piece of the image moved elsewhere). Train crops come from the top 55 % of each source,
test crops from the rest, so test images are unseen.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..synthesis import as_generator, cutpaste_normal, draem_paste, procedural_texture
from .._io import apply_umask
from .images import resize_image, save_image

SKIMAGE_TEXTURES = ("brick", "gravel", "grass")
PROCEDURAL_TEXTURES = ("marble",)
DEMO_CATEGORIES = SKIMAGE_TEXTURES + PROCEDURAL_TEXTURES
DEFECTS = ("scratch", "stain", "patch")
_MARKER = ".ad_fast_demo.json"
_SOURCE_SIZE = 512
_TRAIN_SHARE = 0.55


def _source_texture(category: str) -> torch.Tensor:
    """The large source image ``[3, 512, 512]`` of a category."""
    if category in SKIMAGE_TEXTURES:
        try:
            import skimage.data
        except ImportError as error:
            raise ValueError(f"categories: {category!r} is a scikit-image sample texture; install scikit-image, "
                             f"or use the procedural categories {PROCEDURAL_TEXTURES}") from error

        gray = getattr(skimage.data, category)()
        tensor = torch.from_numpy(np.ascontiguousarray(gray)).float().div(255.0)
        return tensor[None].expand(3, -1, -1)[:, :_SOURCE_SIZE, :_SOURCE_SIZE].contiguous()
    if category in PROCEDURAL_TEXTURES:
        return procedural_texture(_SOURCE_SIZE, np.random.default_rng(7), kind=category)
    raise ValueError(f"categories: expected names from {DEMO_CATEGORIES}, got {category!r}")


def _crop(source: torch.Tensor, rows: tuple[int, int], size: int, rng: np.random.Generator) -> torch.Tensor:
    crop = int(0.35 * _SOURCE_SIZE)
    top = int(rng.integers(rows[0], rows[1] - crop + 1))
    left = int(rng.integers(0, source.shape[2] - crop + 1))
    image = source[:, top:top + crop, left:left + crop]
    if rng.uniform() < 0.5:
        image = image.flip(-1)
    return resize_image(image, size).clamp(0, 1)


def _scratch(image: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A thin quadratic-Bezier line, darker or brighter than the surface."""
    from scipy import ndimage

    height, width = image.shape[-2:]
    p0, p1, p2 = (rng.uniform(0.15, 0.85, 2) * (height, width) for _ in range(3))
    t = np.linspace(0, 1, 4 * (height + width))[:, None]
    points = ((1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2).round().astype(int)
    mask = np.zeros((height, width), dtype=bool)
    mask[points[:, 0].clip(0, height - 1), points[:, 1].clip(0, width - 1)] = True
    mask = ndimage.binary_dilation(mask, iterations=int(rng.integers(1, 3)))
    mask_t = torch.from_numpy(mask).float()[None]
    shade = float(rng.choice([0.1, 0.9]))
    return image * (1 - 0.8 * mask_t) + 0.8 * shade * mask_t, mask_t


def _stain(image: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    texture = procedural_texture(tuple(image.shape[-2:]), rng)
    return draem_paste(image, rng, texture=texture, beta_range=(0.1, 0.5), augment=False,
                       scale_exponents=(1, 4), min_pixels=int(0.01 * image.shape[-1] * image.shape[-2]))


_DEFECT_MAKERS = {"scratch": _scratch, "stain": _stain, "patch": lambda image, rng: cutpaste_normal(image, rng)}


def make_demo_dataset(root: str | os.PathLike, categories: Sequence[str] = ("brick", "gravel", "marble"),
                      n_train: int = 16, n_test_good: int = 4, n_per_defect: int = 3, size: int = 128,
                      seed: int = 0) -> Path:
    """Write the demo dataset under ``root`` (MVTec AD layout) and return ``root``.

    The tree is built in a temporary folder and renamed into place, so ``root`` is either complete or absent. If
    ``root`` already holds a demo made with the same arguments it is reused; any other existing content is an error.

    Args:
        categories: names from :data:`DEMO_CATEGORIES`.
        n_train: normal training images per category.
        n_test_good, n_per_defect: normal test images, and test images per defect type (:data:`DEFECTS`).
        size: side of the square images in pixels.
    """
    root = Path(root)
    params = {"categories": list(categories), "n_train": n_train, "n_test_good": n_test_good,
              "n_per_defect": n_per_defect, "size": size, "seed": seed, "version": 1}
    for name in categories:
        if name not in DEMO_CATEGORIES:
            raise ValueError(f"categories: expected names from {DEMO_CATEGORIES}, got {name!r}")
    if min(n_train, n_test_good + n_per_defect) < 1 or size < 16:
        raise ValueError("n_train and n_test_good + n_per_defect must be >= 1 and size >= 16")
    if root.exists():
        marker = root / _MARKER
        if marker.is_file() and json.loads(marker.read_text()) == params:
            return root
        if any(root.iterdir()):
            raise FileExistsError(f"root: {str(root)!r} exists and is not a demo dataset made with these arguments; "
                                  "choose an empty or new folder")
        root.rmdir()
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        apply_umask(staging)  # it becomes root: not mkdtemp's 0700
        for index, name in enumerate(categories):
            _write_category(staging / name, _source_texture(name), params, as_generator(seed * 1000 + index))
        (staging / "README.txt").write_text(_readme(categories))
        (staging / _MARKER).write_text(json.dumps(params))
        os.replace(staging, root)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return root


def _readme(categories: Sequence[str]) -> str:
    """The dataset's README.txt: names only the categories generated."""
    scanned = [c for c in categories if c in SKIMAGE_TEXTURES]
    procedural = [c for c in categories if c in PROCEDURAL_TEXTURES]
    lines = ["ad_fast demo dataset (MVTec AD layout), generated by ad_fast.data.demo.make_demo_dataset."]
    if scanned:
        lines.append(f"{'/'.join(scanned)}: crops of scikit-image sample textures (CC0, cc0textures.com).")
    if procedural:
        lines.append(f"{'/'.join(procedural)}: procedural.")
    lines.append("Defects (scratch, stain, patch) and their masks are synthetic.")
    return "\n".join(lines) + "\n"


def _write_category(folder: Path, source: torch.Tensor, params: dict, rng: np.random.Generator) -> None:
    size, split_row = params["size"], int(_TRAIN_SHARE * _SOURCE_SIZE)
    for i in range(params["n_train"]):
        save_image(folder / "train" / "good" / f"{i:03d}.png", _crop(source, (0, split_row), size, rng))
    for i in range(params["n_test_good"]):
        save_image(folder / "test" / "good" / f"{i:03d}.png", _crop(source, (split_row, _SOURCE_SIZE), size, rng))
    for defect in DEFECTS:
        for i in range(params["n_per_defect"]):
            image, mask = _DEFECT_MAKERS[defect](_crop(source, (split_row, _SOURCE_SIZE), size, rng), rng)
            save_image(folder / "test" / defect / f"{i:03d}.png", image)
            save_image(folder / "ground_truth" / defect / f"{i:03d}_mask.png", mask)
