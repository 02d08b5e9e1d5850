"""HOGTransform: images in, the HOG image ReDi's recover network is driven by out (spec redi.md §2.2, §8.2)."""

from __future__ import annotations

from typing import Sequence

import torch

from .hog import hog

# scikit-image rgb2gray weights (ITU-R BT.709).
_GRAY_WEIGHTS = (0.2125, 0.7154, 0.0721)


class HOGTransform(torch.nn.Module):
    """HOG image of each input, scaled to a fixed value range; usable as a torchvision-style transform.

    The image is brought to 0-255 data (uint8 as is; floats are assumed in [0, ``input_max``] and rescaled), its
    HOG image computed with :func:`ad_fast.ops.hog` (block normalisation does not affect it), then normalised:
    ``scale="fixed"`` gives ``clip(h / clip_max, 0, 1)`` (skimage's ``rescale_intensity(in_range=(0, 10))`` for the
    default ``clip_max=10``), ``scale="max"`` divides each image by its own maximum. The result in [0, 1] is
    mapped linearly onto ``value_range`` and repeated to ``out_channels``.

    Input ``[C, H, W]`` or ``[B, C, H, W]`` (C in 1, 3); output ``[out_channels, H, W]`` or
    ``[B, out_channels, H, W]`` float32.
    """

    def __init__(
        self,
        orientations: int = 9,
        pixels_per_cell: int | Sequence[int] = (8, 8),
        colour: str = "rgb",
        scale: str = "fixed",
        clip_max: float = 10.0,
        input_max: float = 1.0,
        value_range: tuple[float, float] = (0.0, 1.0),
        out_channels: int = 1,
    ) -> None:
        super().__init__()
        if colour not in ("rgb", "gray"):
            raise ValueError(f"colour: expected 'rgb' (dominant channel) or 'gray', got {colour!r}")
        if scale not in ("fixed", "max"):
            raise ValueError(f"scale: expected 'fixed' or 'max', got {scale!r}")
        if not clip_max > 0:
            raise ValueError(f"clip_max: expected a positive number, got {clip_max!r}")
        if not input_max > 0:
            raise ValueError(f"input_max: expected a positive number, got {input_max!r}")
        if out_channels not in (1, 3):
            raise ValueError(f"out_channels: expected 1 or 3, got {out_channels!r}")
        low, high = value_range
        if not high > low:
            raise ValueError(f"value_range: expected (low, high) with high > low, got {value_range!r}")
        self.orientations = orientations
        self.pixels_per_cell = pixels_per_cell
        self.colour = colour
        self.scale = scale
        self.clip_max = float(clip_max)
        self.input_max = float(input_max)
        self.value_range = (float(low), float(high))
        self.out_channels = out_channels

    def _to_0_255(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype == torch.uint8:
            data = images if self.colour == "rgb" else images.float()
        else:
            data = images.float() * (255.0 / self.input_max)
        if self.colour == "gray" and data.shape[1] == 3:
            weights = torch.tensor(_GRAY_WEIGHTS, dtype=data.dtype, device=data.device)
            data = (data * weights[:, None, None]).sum(1, keepdim=True)
        return data

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images: expected a torch.Tensor [C, H, W] or [B, C, H, W], got {type(images).__name__}")
        single = images.dim() == 3
        if images.dim() not in (3, 4):
            raise ValueError(f"images: expected [C, H, W] or [B, C, H, W], got shape {tuple(images.shape)}")
        batch = images[None] if single else images
        # cells_per_block=(1, 1): blocks play no part in the HOG image; one cell is the smallest valid image.
        _, hog_image = hog(
            self._to_0_255(batch), self.orientations, self.pixels_per_cell, (1, 1), "L2-Hys", False, True, True
        )
        hog_image = hog_image.float()
        if self.scale == "fixed":
            unit = (hog_image / self.clip_max).clamp_(0.0, 1.0)
        else:
            peak = hog_image.amax(dim=(1, 2, 3), keepdim=True)
            unit = hog_image / torch.where(peak > 0, peak, torch.ones_like(peak))
        low, high = self.value_range
        out = unit * (high - low) + low
        if self.out_channels == 3:
            out = out.expand(-1, 3, -1, -1).contiguous()
        return out[0] if single else out

    def extra_repr(self) -> str:
        return (
            f"orientations={self.orientations}, pixels_per_cell={self.pixels_per_cell}, colour={self.colour!r}, "
            f"scale={self.scale!r}, clip_max={self.clip_max}, value_range={self.value_range}, "
            f"out_channels={self.out_channels}"
        )
