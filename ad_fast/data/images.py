"""Turn whatever a user holds (paths, PIL images, NumPy arrays, tensors) into one float image batch."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch

from .._io import atomic_path

ImageInput = Union[str, os.PathLike, "PIL.Image.Image", np.ndarray, torch.Tensor]  # noqa: F821
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MASK_SUFFIXES = ("_mask", "_GT")
# Largest image side a model resizes to: configurations (also those read from a saved model) beyond it are refused
# up front instead of failing deep inside torch (8192^2 RGB float32 is already 768 MiB per image).
MAX_IMAGE_SIDE = 8192


def check_image_side(value: object, name: str, multiple: int = 1, minimum: int = 1) -> int:
    """``value`` if it is an int in ``[minimum, MAX_IMAGE_SIDE]`` divisible by ``multiple``, else ValueError."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not minimum <= value <= MAX_IMAGE_SIDE
        or value % multiple
    ):
        rule = f" and a multiple of {multiple}" if multiple > 1 else ""
        raise ValueError(f"{name}: expected an int in [{minimum}, {MAX_IMAGE_SIDE}]{rule}, got {value!r}")
    return value  # file stems ending so are ground-truth masks, not images to score


def is_image_file(path: Path) -> bool:
    """True for an image file to read from a folder: a known extension, not hidden (``.x.png``, macOS ``._x.png``)
    and not a mask (``*_mask.*`` / ``*_GT.*``)."""
    return (
        path.suffix.lower() in IMAGE_EXTENSIONS
        and not path.name.startswith(".")
        and not path.stem.endswith(MASK_SUFFIXES)
        and path.is_file()
    )


def _open_image(path: str | os.PathLike, what: str) -> "PIL.Image.Image":  # noqa: F821
    """The decoded image at ``path``; FileNotFoundError if absent, ValueError (naming ``what``) if unreadable."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {str(path)!r}")
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except PermissionError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        # DecompressionBombError: more than twice PIL's MAX_IMAGE_PIXELS (about 179 million pixels).
        raise ValueError(f"cannot read {what} {str(path)!r}: {error}") from error


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file (PNG/JPG/BMP/TIFF; 8-bit grey, 16-bit grey, palette, RGB or RGBA) as RGB ``uint8`` ``[H, W, 3]``.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the file exists but is not a readable image.
    """
    img = _open_image(path, "image")
    if img.mode.startswith("I;16") or img.mode == "I":  # 16-bit grey: scale, PIL's convert would clip
        grey = np.asarray(img, dtype=np.float64) * (255.0 / 65535.0)
        return np.repeat(np.clip(grey, 0, 255).round().astype(np.uint8)[:, :, None], 3, axis=2)
    rgb = img.convert("RGB")
    return np.array(rgb, dtype=np.uint8)  # a writable copy (torch.from_numpy warns on read-only arrays)


def _array_to_chw(array: np.ndarray, name: str) -> torch.Tensor:
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"{name}: expected an array [H, W], [H, W, 1|3|4], got shape {tuple(array.shape)}")
    if array.shape[2] == 4:
        array = array[:, :, :3]
    if array.dtype != np.uint8 and not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"{name}: expected a uint8 or float array, got dtype {array.dtype}")
    # np.array copies: the caller's array may be read-only (np.asarray of a PIL image), which torch warns about.
    tensor = torch.from_numpy(np.array(array, dtype=np.float32))
    return (tensor.div_(255.0) if array.dtype == np.uint8 else tensor).permute(2, 0, 1)


def _one_image(item: ImageInput, name: str) -> torch.Tensor:
    """One image as float32 ``[3, H, W]`` in [0, 1]."""
    if isinstance(item, (str, os.PathLike)):
        chw = _array_to_chw(load_image(item), name)
    elif isinstance(item, np.ndarray):
        chw = _array_to_chw(item, name)
    elif isinstance(item, torch.Tensor):
        if item.ndim == 2:
            item = item.unsqueeze(0)
        if item.ndim != 3 or item.shape[0] not in (1, 3):
            raise ValueError(f"{name}: expected a tensor [C, H, W] with C in (1, 3), got shape {tuple(item.shape)}")
        if item.dtype not in (torch.uint8, torch.bool) and not item.is_floating_point():  # int16 is not [0, 1]
            raise TypeError(
                f"{name}: expected a uint8, bool or float tensor, got dtype {str(item.dtype).replace('torch.', '')}"
            )
        chw = item.float().div(255.0) if item.dtype == torch.uint8 else item.float()
    else:
        try:
            from PIL import Image
        except ImportError:  # pragma: no cover
            Image = None
        if Image is not None and isinstance(item, Image.Image):
            chw = _array_to_chw(np.array(item.convert("RGB")), name)  # writable copy for torch.from_numpy
        else:
            raise TypeError(f"{name}: expected a path, PIL image, NumPy array or tensor, got {type(item).__name__}")
    if chw.shape[0] == 1:
        chw = chw.expand(3, -1, -1)
    if chw.shape[1] == 0 or chw.shape[2] == 0:
        raise ValueError(f"{name}: image has zero size {tuple(chw.shape[1:])}")
    if not bool(torch.isfinite(chw).all()):  # float inputs only; also float64 values beyond float32's range
        raise ValueError(f"{name}: image contains NaN or Inf")
    return chw


def to_image_batch(images: ImageInput | Sequence[ImageInput], name: str = "images") -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
    """Normalise user input to a list of float32 RGB tensors ``[3, H_i, W_i]`` in [0, 1] and their sizes.

    Accepts a single path / PIL image / array / tensor ``[C, H, W]``, a batch tensor ``[B, C, H, W]``
    (uint8 is scaled by 1/255, float is taken as [0, 1]), or a list of any of these. Grayscale is repeated to RGB.
    """
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        items: list = list(images.unbind(0))
    elif isinstance(images, np.ndarray) and images.ndim == 4:
        items = list(images)
    elif isinstance(images, (list, tuple)):
        items = list(images)
    else:
        items = [images]
    if not items:
        raise ValueError(f"{name}: expected at least one image, got an empty input")
    tensors = [_one_image(item, f"{name}[{i}]") for i, item in enumerate(items)]
    return tensors, [(int(t.shape[1]), int(t.shape[2])) for t in tensors]


def _as_size(size: int | tuple[int, int], name: str = "size") -> tuple[int, int]:
    if isinstance(size, int):
        size = (size, size)
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and 0 < s <= MAX_IMAGE_SIDE for s in size)
    ):
        raise ValueError(
            f"{name}: expected an int or a pair (H, W) of ints in [1, {MAX_IMAGE_SIDE}], got {size!r}"
        )
    return int(size[0]), int(size[1])


def resize_image(image: torch.Tensor, size: int | tuple[int, int], antialias: bool = True) -> torch.Tensor:
    """Bilinearly resize an image ``[C, H, W]`` (or batch ``[B, C, H, W]``) to ``size`` (H, W).

    ``antialias=True`` matches PIL's bilinear resize when shrinking. Returns the input when it already has the size.
    """
    size = _as_size(size)
    if tuple(image.shape[-2:]) == size:
        return image
    batch = image if image.ndim == 4 else image.unsqueeze(0)
    out = torch.nn.functional.interpolate(batch, size=size, mode="bilinear", align_corners=False, antialias=antialias)
    return out if image.ndim == 4 else out.squeeze(0)


def read_image(path: str | os.PathLike, size: int | tuple[int, int] | None = None) -> torch.Tensor:
    """Read an image file (PNG/JPG/BMP/TIFF, grey or colour) as float32 RGB ``[3, H, W]`` in [0, 1], resized to ``size``."""
    image = _array_to_chw(load_image(path), str(path))  # a [3, H, W] view of the [H, W, 3] pixels
    # Resized from that view (the same values as from a contiguous copy), so only the resized image is transposed.
    return (image if size is None else resize_image(image, size).clamp_(0.0, 1.0)).contiguous()


def read_mask(path: str | os.PathLike, size: int | tuple[int, int] | None = None) -> torch.Tensor:
    """Read a ground-truth mask file as float32 ``[1, H, W]`` in {0, 1} (any non-zero pixel is anomalous).

    Resizing uses nearest-neighbour sampling so the mask stays binary.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the file exists but is not a readable image.
    """
    array = np.asarray(_open_image(path, "mask"))
    if array.ndim == 3:
        array = array[:, :, :3].max(axis=2) if array.shape[2] >= 3 else array[:, :, 0]
    mask = torch.from_numpy(np.ascontiguousarray(array > 0)).float().unsqueeze(0)
    if size is not None and tuple(mask.shape[-2:]) != _as_size(size):
        mask = torch.nn.functional.interpolate(mask.unsqueeze(0), size=_as_size(size), mode="nearest").squeeze(0)
    return mask


def save_image(path: str | os.PathLike, image: torch.Tensor | np.ndarray) -> None:
    """Write ``image`` (float ``[C, H, W]`` in [0, 1], or uint8 ``[H, W]`` / ``[H, W, 3]``) to ``path`` atomically.

    The file is written beside its destination under a temporary name, then renamed, so a reader never sees half an image.
    """
    from PIL import Image

    if isinstance(image, torch.Tensor):
        array = image.detach().cpu().float().clamp(0, 1).mul(255).round().byte()
        array = array.squeeze(0).numpy() if array.shape[0] == 1 else array.permute(1, 2, 0).numpy()
    else:
        array = np.asarray(image)
    if array.dtype != np.uint8:
        raise TypeError(f"image: expected a float tensor or a uint8 array, got dtype {array.dtype}")
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format=Image.registered_extensions().get(Path(path).suffix.lower(), "PNG"))
