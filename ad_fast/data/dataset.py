"""The dataset type every reader returns: a list of records, loaded lazily as resized image/mask samples."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import torch

from .images import _as_size, read_image, read_mask

_MAX_LISTED = 20


@dataclass(frozen=True)
class Record:
    """One image of a dataset on disk.

    Attributes:
        image_path: the image file.
        mask_path: its ground-truth mask, or ``None`` (a normal image, or an anomalous one without a mask).
        label: 0 normal, 1 anomalous.
        category: the object/texture class (e.g. ``"bottle"``).
        defect: the defect type, ``"good"`` for normal images.
    """

    image_path: Path
    mask_path: Path | None
    label: int
    category: str
    defect: str


class Sample(NamedTuple):
    """One loaded item; ``torch.utils.data.default_collate`` stacks a list of them into a batch.

    Attributes:
        image (Tensor[3, H, W], float32): RGB in [0, 1], resized to the dataset's size.
        mask (Tensor[1, H, W], float32): ground truth in {0, 1}; zeros for normal images.
        label (int): 0 normal, 1 anomalous.
        category (str): class name.
        defect (str): defect type, ``"good"`` for normal images.
        path (str): the image file.
    """

    image: torch.Tensor
    mask: torch.Tensor
    label: int
    category: str
    defect: str
    path: str


class AnomalyDataset(torch.utils.data.Dataset):
    """Images of one split of an anomaly-detection dataset, one or several categories at once.

    Args:
        records: the images (see :class:`Record`).
        size (int or (H, W) or None): every image and mask is resized to this; ``None`` keeps each file's size.
        name: a label for messages and reports (e.g. ``"mvtec/test"``).

    Raises:
        ValueError: ``records`` is empty.
        FileNotFoundError: some image or mask files do not exist (the message lists them).
    """

    def __init__(self, records: Sequence[Record], size: int | tuple[int, int] | None = 256, name: str = "dataset"):
        self.records = list(records)
        self.size = None if size is None else _as_size(size)
        self.name = name
        if not self.records:
            raise ValueError(f"{name}: no images found")
        check_files_exist(self.records, name)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        record = self.records[index]
        image = read_image(record.image_path, self.size)
        if record.mask_path is not None:
            mask = read_mask(record.mask_path, image.shape[-2:])
        else:
            mask = torch.zeros(1, *image.shape[-2:])
        return Sample(image, mask, record.label, record.category, record.defect, str(record.image_path))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, images={len(self)}, anomalous={int(self.labels.sum())}, "
                f"categories={self.categories}, size={self.size})")

    @property
    def categories(self) -> list[str]:
        """The sorted class names present."""
        return sorted({r.category for r in self.records})

    @property
    def labels(self) -> torch.Tensor:
        """Tensor[N] int64 of 0 (normal) / 1 (anomalous)."""
        return torch.tensor([r.label for r in self.records], dtype=torch.long)

    @property
    def has_masks(self) -> bool:
        """Whether every anomalous image has a ground-truth mask (pixel metrics need it)."""
        return all(r.mask_path is not None for r in self.records if r.label == 1)

    def subset(self, category: str | None = None, label: int | None = None) -> "AnomalyDataset":
        """The images of one ``category`` and/or one ``label`` (``None`` keeps all)."""
        records = [r for r in self.records
                   if (category is None or r.category == category) and (label is None or r.label == label)]
        if not records:
            raise ValueError(f"{self.name}: no images with category={category!r}, label={label!r}; "
                             f"categories are {self.categories}")
        out = object.__new__(type(self))
        AnomalyDataset.__init__(out, records, self.size, f"{self.name}/{category}" if category else self.name)
        return out

    def batches(self, batch_size: int = 32, num_workers: int = 0) -> Iterator[Sample]:
        """Iterate over stacked batches in order: ``image [B, 3, H, W]``, ``mask [B, 1, H, W]``, ``label [B]``,
        and lists of ``category``, ``defect``, ``path``. Needs a fixed ``size``."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        if self.size is None:
            raise ValueError(f"{self.name}: batches need a fixed size; build the dataset with size=(H, W)")
        loader = torch.utils.data.DataLoader(self, batch_size=batch_size, shuffle=False, num_workers=num_workers)
        for batch in loader:
            yield Sample(*batch)


def check_files_exist(records: Sequence[Record], name: str) -> None:
    """Raise ``FileNotFoundError`` listing every image or mask file of ``records`` that does not exist."""
    missing = []
    for record in records:
        for path in (record.image_path, record.mask_path):
            if path is not None and not path.is_file():
                missing.append(str(path))
    if missing:
        listed = "\n  ".join(missing[:_MAX_LISTED])
        more = f"\n  ... and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED else ""
        raise FileNotFoundError(f"{name}: {len(missing)} file(s) missing:\n  {listed}{more}")
