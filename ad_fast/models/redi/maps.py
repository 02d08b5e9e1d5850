"""The self-generated map H that drives ReDi's recover network (spec §2.2): the HOG image by default, or one of
the edge maps of the paper's map ablation (Tab. 5, §4.3.1), computed with OpenCV as the paper names them.

Every map is built from images Tensor[B, 3, S, S] in [0, 1] and returned as Tensor[B, C, S, S] in [-1, 1]
(the recover network's value range), C = 1 or 3 (the one map repeated); ``.out_channels`` gives C.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ...ops import HOGTransform
from .config import ReDiConfig

EDGE_MAPS = ("sobel", "roberts", "canny")
CANNY_THRESHOLDS = (50, 100)
# Largest possible value of each map on uint8 data, so that a fixed division brings it into [0, 1].
_EDGE_MAX = {"sobel": 4 * 255 * math.sqrt(2), "roberts": 255 * math.sqrt(2), "canny": 255.0}
_ROBERTS = (np.array([[-1, 0], [0, 1]], np.float32), np.array([[0, -1], [1, 0]], np.float32))


def _cv2():
    try:
        import cv2
    except ImportError as error:
        raise ImportError("input_map: the Sobel, Roberts and Canny maps need OpenCV (pip install 'ad_fast[opencv]')") from error
    return cv2


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] → uint8 0-255 (rounded, clamped), same shape."""
    return x.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


def edge_map(gray: np.ndarray, kind: str) -> np.ndarray:
    """One edge map of a uint8 grayscale image [H, W] → float32 [H, W] (gradient magnitude, or Canny's 0/255).

    sobel: hypot of ``cv2.Sobel(gray, CV_32F, 1, 0, ksize=3)`` and ``(..., 0, 1, ksize=3)``;
    roberts: hypot of ``cv2.filter2D`` with [[-1, 0], [0, 1]] and [[0, -1], [1, 0]]; canny: ``cv2.Canny(gray, 50, 100)``.
    """
    cv2 = _cv2()
    if kind == "canny":
        return cv2.Canny(gray, *CANNY_THRESHOLDS).astype(np.float32)
    if kind == "sobel":
        gx, gy = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)
    else:
        gx, gy = (cv2.filter2D(gray, cv2.CV_32F, kernel) for kernel in _ROBERTS)
    return cv2.magnitude(gx, gy)


class EdgeMap(nn.Module):
    """Sobel, Roberts or Canny map of RGB images (OpenCV, on the uint8 ``cv2.COLOR_RGB2GRAY`` image).

    The map is divided by its largest possible value (Sobel 4·255·√2, Roberts 255·√2, Canny 255) into [0, 1]
    [INF: the paper gives no normalisation], then mapped onto [-1, 1] and repeated to ``out_channels``.
    forward(images: Tensor[B, 3, H, W] in [0, 1]) -> Tensor[B, out_channels, H, W] float32 in [-1, 1], on the
    input's device (the maps are computed on the CPU).
    """

    def __init__(self, kind: str, out_channels: int = 1) -> None:
        super().__init__()
        if kind not in EDGE_MAPS:
            raise ValueError(f"kind: expected one of {EDGE_MAPS}, got {kind!r}")
        self.kind = kind
        self.out_channels = out_channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        cv2 = _cv2()
        rgb = to_uint8(images.detach()).permute(0, 2, 3, 1).cpu().numpy()
        maps = np.stack([edge_map(cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY), self.kind) for img in rgb])
        unit = torch.from_numpy(maps).div_(_EDGE_MAX[self.kind]).clamp_(0.0, 1.0)
        out = (unit * 2.0 - 1.0).unsqueeze(1).expand(-1, self.out_channels, -1, -1)
        return out.contiguous().to(images.device)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, out_channels={self.out_channels}"


def build_map_transform(config: ReDiConfig) -> nn.Module:
    """The map module ``config.input_map`` names: HOG (bins/cell/colour/scale from the config) or an :class:`EdgeMap`."""
    if config.input_map == "hog":
        return HOGTransform(
            orientations=config.hog_orientations,
            pixels_per_cell=(config.hog_cell, config.hog_cell),
            colour=config.hog_colour,
            scale=config.hog_scale,
            value_range=(-1.0, 1.0),
            out_channels=config.hog_channels,
        )
    return EdgeMap(config.input_map, config.hog_channels)
