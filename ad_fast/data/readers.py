"""Readers for the standard anomaly-detection layouts; each returns an :class:`AnomalyDataset`.

``category=None`` takes every class at once (the unified setting); a string or a list picks classes.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Callable, Sequence, Tuple, Union

import numpy as np

from .dataset import AnomalyDataset, Record
from .images import IMAGE_EXTENSIONS, is_image_file
Size = Union[int, Tuple[int, int], None]
Categories = Union[str, Sequence[str], None]


def _root(root: str | os.PathLike, name: str = "root") -> Path:
    path = Path(root)
    if not path.is_dir():
        raise FileNotFoundError(f"{name}: dataset folder not found: {str(path)!r}")
    return path


def _split(split: str) -> str:
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    return split


def list_images(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """The image files of ``folder`` (``recursive``: also of its sub-folders), sorted by path; hidden files (and
    files in hidden folders) and mask files (``*_mask.*`` / ``*_GT.*``) are skipped
    (:func:`ad_fast.data.images.is_image_file`). The one folder listing of ad_fast: datasets, model inputs,
    textures."""
    folder = Path(folder)
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in candidates
                  if is_image_file(p) and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _find_mask(folder: Path, stem: str, suffixes: Sequence[str]) -> Path:
    """The mask ``folder/<stem><suffix>.<ext>`` that exists; else the expected ``.png`` path (reported missing later)."""
    for suffix in suffixes:
        for ext in IMAGE_EXTENSIONS:
            for candidate in (folder / f"{stem}{suffix}{ext}", folder / f"{stem}{suffix}{ext.upper()}"):
                if candidate.is_file():
                    return candidate
    return folder / f"{stem}{suffixes[0]}.png"


def _pick_categories(available: Sequence[str], category: Categories, root: Path) -> list[str]:
    if not available:
        raise ValueError(f"root: no category folders found under {str(root)!r}")
    if category is None:
        return sorted(available)
    wanted = [category] if isinstance(category, str) else list(category)
    unknown = [c for c in wanted if c not in available]
    if unknown:
        raise ValueError(f"category: {unknown} not found under {str(root)!r}; available: {sorted(available)}")
    return wanted


def _scan_class_folders(root: Path, split: str, category: Categories, good: str,
                        mask_suffixes: Sequence[str]) -> list[Record]:
    """MVTec-style: ``<cls>/train/<good>``, ``<cls>/test/<defect>``, ``<cls>/ground_truth/<defect>/<stem><suffix>``.

    ``root`` may also be a single class folder (it then holds ``train/`` and ``test/`` itself).
    """
    if (root / "train").is_dir() or (root / "test").is_dir():
        folders = {root.name: root}
    else:
        folders = {p.name: p for p in root.iterdir() if p.is_dir() and ((p / "train").is_dir() or (p / "test").is_dir())}
    records = []
    for name in _pick_categories(list(folders), category, root):
        split_dir = folders[name] / split
        if not split_dir.is_dir():
            raise FileNotFoundError(f"root: {str(split_dir)!r} not found")
        for defect_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            defect = defect_dir.name
            if split == "train" and defect != good:
                continue
            is_good = defect == good
            for image in list_images(defect_dir):
                mask = None if is_good else _find_mask(folders[name] / "ground_truth" / defect, image.stem, mask_suffixes)
                records.append(Record(image, mask, 0 if is_good else 1, name, "good" if is_good else defect))
    return records


class MVTecAD(AnomalyDataset):
    """MVTec AD layout: ``<root>/<cls>/{train/good, test/<defect>, ground_truth/<defect>/<stem>_mask.png}``."""

    def __init__(self, root: str | os.PathLike, split: str = "test", category: Categories = None, size: Size = 256):
        records = _scan_class_folders(_root(root), _split(split), category, "good", ("_mask", ""))
        super().__init__(records, size, f"mvtec/{split}")


class BTAD(AnomalyDataset):
    """BTAD layout: ``<root>/<01|02|03>/{train/ok, test/{ok,ko}, ground_truth/ko/<stem>.png}``."""

    def __init__(self, root: str | os.PathLike, split: str = "test", category: Categories = None, size: Size = 256):
        records = _scan_class_folders(_root(root), _split(split), category, "ok", ("", "_mask"))
        super().__init__(records, size, f"btad/{split}")


class VisA(AnomalyDataset):
    """VisA with its split CSV (columns ``object, split, label, image, mask``; paths relative to ``root``).

    Args:
        split_csv: the CSV file; default ``<root>/split_csv/1cls.csv``.
    """

    def __init__(self, root: str | os.PathLike, split: str = "test", category: Categories = None, size: Size = 256,
                 split_csv: str | os.PathLike | None = None):
        root, split = _root(root), _split(split)
        csv_path = Path(split_csv) if split_csv is not None else root / "split_csv" / "1cls.csv"
        if not csv_path.is_file():
            raise FileNotFoundError(f"split_csv: VisA split file not found: {str(csv_path)!r}")
        with open(csv_path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        need = {"object", "split", "label", "image", "mask"}
        if not rows or not need <= set(rows[0]):
            raise ValueError(f"split_csv: expected columns {sorted(need)} in {str(csv_path)!r}")
        wanted = set(_pick_categories(sorted({r["object"] for r in rows}), category, root))
        records = []
        for row in rows:
            if row["split"] != split or row["object"] not in wanted:
                continue
            anomalous = row["label"].strip().lower() not in ("normal", "good", "0")
            mask = root / row["mask"] if anomalous and row["mask"] else None
            records.append(Record(root / row["image"], mask, int(anomalous), row["object"],
                                  "anomaly" if anomalous else "good"))
        super().__init__(records, size, f"visa/{split}")


class KSDD2(AnomalyDataset):
    """KolektorSDD2: ``<root>/{train,test}/<id>.png`` with ``<id>_GT.png``; an image is anomalous if its mask is not empty.

    Args:
        train_anomalous: keep the anomalous training images in ``split="train"`` (off: unsupervised training).
    """

    def __init__(self, root: str | os.PathLike, split: str = "test", size: Size = 256, train_anomalous: bool = False):
        from PIL import Image

        folder = _root(root) / _split(split)
        if not folder.is_dir():
            raise FileNotFoundError(f"root: {str(folder)!r} not found")
        records = []
        for image in list_images(folder):
            if image.stem.endswith("_GT"):
                continue
            mask = _find_mask(folder, image.stem, ("_GT",))
            anomalous = 0
            if mask.is_file():
                with Image.open(mask) as handle:
                    anomalous = int(np.asarray(handle).any())
            if split == "train" and anomalous and not train_anomalous:
                continue
            records.append(Record(image, mask if anomalous else None, anomalous, "ksdd2",
                                  "defect" if anomalous else "good"))
        super().__init__(records, size, f"ksdd2/{split}")


class Folder(AnomalyDataset):
    """Your own images: a folder of normal images, optionally a folder of anomalous ones (sub-folders = defect types)
    and a folder of masks (``<stem>.png`` or ``<stem>_mask.png``, mirroring the anomalous sub-folders).

    Without ``normal_test_dir``, a seeded ``test_ratio`` share of the normal images is held out for the test split.
    """

    def __init__(self, normal_dir: str | os.PathLike, split: str = "test", abnormal_dir: str | os.PathLike | None = None,
                 mask_dir: str | os.PathLike | None = None, normal_test_dir: str | os.PathLike | None = None,
                 category: str = "folder", size: Size = 256, test_ratio: float = 0.2, seed: int = 0):
        split = _split(split)
        if not 0.0 <= test_ratio < 1.0:
            raise ValueError(f"test_ratio: expected a value in [0, 1), got {test_ratio!r}")
        normals = list_images(_root(normal_dir, "normal_dir"))
        if normal_test_dir is not None:
            train_normals, test_normals = normals, list_images(_root(normal_test_dir, "normal_test_dir"))
        else:
            order = np.random.default_rng(seed).permutation(len(normals))
            n_test = int(round(test_ratio * len(normals)))
            test_normals = [normals[i] for i in sorted(order[:n_test])]
            train_normals = [normals[i] for i in sorted(order[n_test:])]
        chosen = train_normals if split == "train" else test_normals
        records = [Record(p, None, 0, category, "good") for p in chosen]
        if split == "test" and abnormal_dir is not None:
            records += _folder_anomalies(_root(abnormal_dir, "abnormal_dir"),
                                         None if mask_dir is None else _root(mask_dir, "mask_dir"), category)
        super().__init__(records, size, f"{category}/{split}")


def _folder_anomalies(abnormal: Path, masks: Path | None, category: str) -> list[Record]:
    groups = [(abnormal, "abnormal")] + [(p, p.name) for p in sorted(abnormal.iterdir()) if p.is_dir()]
    records = []
    for folder, defect in groups:
        mask_folder = None if masks is None else (masks if folder == abnormal else masks / defect)
        for image in list_images(folder):
            mask = None if mask_folder is None else _find_mask(mask_folder, image.stem, ("", "_mask"))
            records.append(Record(image, mask, 1, category, defect))
    return records


class JsonlDataset(AnomalyDataset):
    """The JSON-lines lists of the MetaUAS/OneNIP releases: one object per line with ``filename, label, label_name,
    maskname, clsname`` (paths relative to ``root``; ``maskname`` empty or absent for normal images).

    Args:
        list_file: the list; default ``<root>/<split>.json`` (or ``.jsonl``).
    """

    def __init__(self, root: str | os.PathLike, split: str = "test", category: Categories = None, size: Size = 256,
                 list_file: str | os.PathLike | None = None):
        root, split = _root(root), _split(split)
        if list_file is None:
            list_file = next((root / f"{split}{ext}" for ext in (".jsonl", ".json") if (root / f"{split}{ext}").is_file()),
                             root / f"{split}.json")
        list_file = Path(list_file)
        if not list_file.is_file():
            raise FileNotFoundError(f"list_file: not found: {str(list_file)!r}")
        entries = []
        with open(list_file) as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                    entries.append((entry["filename"], int(entry["label"]), entry.get("label_name") or "",
                                    entry.get("maskname") or None, entry["clsname"]))
                except (ValueError, KeyError, TypeError) as error:
                    raise ValueError(f"list_file: line {number} of {str(list_file)!r} is not a valid entry "
                                     f"(need filename, label, clsname): {error}") from error
        wanted = set(_pick_categories(sorted({e[4] for e in entries}), category, root))
        records = [Record(root / f, root / m if (m and lab) else None, int(lab != 0), cls,
                          "good" if lab == 0 else (name or "anomaly"))
                   for f, lab, name, m, cls in entries if cls in wanted]
        super().__init__(records, size, f"jsonl/{split}")


FORMATS: dict[str, Callable[..., AnomalyDataset]] = {
    "mvtec": MVTecAD, "btad": BTAD, "visa": VisA, "ksdd2": KSDD2, "folder": Folder, "jsonl": JsonlDataset,
}


def open_dataset(format: str, root: str | os.PathLike, split: str = "test", **kwargs) -> AnomalyDataset:
    """Open ``root`` in one of the :data:`FORMATS` (``"mvtec"``, ``"btad"``, ``"visa"``, ``"ksdd2"``, ``"folder"``
    — ``root`` is the normal folder —, ``"jsonl"`` — ``root`` is the data root)."""
    if format not in FORMATS:
        raise ValueError(f"format: expected one of {sorted(FORMATS)}, got {format!r}")
    return FORMATS[format](root, split=split, **kwargs)
