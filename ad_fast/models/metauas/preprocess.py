"""Input preparation as the MetaUAS release does it: RGB in [0, 1], resized to S x S (bilinear,
align_corners=True, no antialias: kornia 0.6.3 ``Resize``), ImageNet normalisation applied inside the model."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ...data import ImageInput, to_image_batch


def resize_square(image: torch.Tensor, size: int) -> torch.Tensor:
    """``[B, 3, H, W]`` → ``[B, 3, size, size]``; the aspect ratio is not kept (as the release)."""
    if image.shape[-2:] == (size, size):
        return image
    return F.interpolate(image, size=(size, size), mode="bilinear", align_corners=True, antialias=False)


def prepare_images(images: ImageInput | Sequence[ImageInput], size: int, name: str,
                   device: torch.device | None = None) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Anything ``to_image_batch`` accepts → ``[B, 3, size, size]`` float32 in [0, 1] and the original ``(H, W)``s."""
    tensors, sizes = to_image_batch(images, name=name)
    batch = torch.cat([resize_square(t.unsqueeze(0).to(device), size) for t in tensors])
    return batch, sizes
