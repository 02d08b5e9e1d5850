"""OneNIP's anomaly map and image score, as the release computes them.

    S_rec = up_ac(||F - F_hat||_2 over channels)            stride 16 → H x W, bilinear align_corners=True
    M_hat = sigmoid(up_ac(refiner logits))                    stride 4 → H x W
    S     = (1 - alpha) · S_rec + alpha · kappa · M_hat      (release: alpha = 0.5)
    score = max over AvgPool2d(S, 16 x 16, stride 1)

kappa rescales the refiner probability to the range of S_rec. The release takes ``(max S_rec + min S_rec) / 2``
over every pixel of the whole test set (transductive); ad_fast calibrates it on normal training images at the end of
``fit`` (:func:`kappa_from_range`) and stores it in the checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ... import ops


def reconstruction_map(features: torch.Tensor, reconstruction: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``||F - F_hat||_2`` over channels (``ops.anomaly_map``, L2) upsampled with align_corners=True → ``[B, 1, H, W]``."""
    distance = ops.anomaly_map(features, reconstruction, out_size=tuple(features.shape[-2:]), metric="l2")
    return F.interpolate(distance, size=size, mode="bilinear", align_corners=True)


def refiner_probability(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Refiner logits ``[B, 1, 4h, 4w]`` → probabilities ``[B, 1, H, W]`` (bilinear, align_corners=True)."""
    return torch.sigmoid(F.interpolate(logits, size=size, mode="bilinear", align_corners=True))


def combine(rec_map: torch.Tensor, probability: torch.Tensor, alpha: float, kappa: float) -> torch.Tensor:
    """``(1 - alpha) · S_rec + alpha · kappa · M_hat``."""
    return (1.0 - alpha) * rec_map + (alpha * kappa) * probability


def image_score(anomaly_map: torch.Tensor, pool_size: int = 16) -> torch.Tensor:
    """Max of the ``pool_size``-square stride-1 average pooling (clipped to the map) → ``[B]``."""
    kernel = (min(pool_size, anomaly_map.shape[-2]), min(pool_size, anomaly_map.shape[-1]))
    return F.avg_pool2d(anomaly_map, kernel, stride=1).flatten(1).amax(dim=1)


def kappa_from_range(rec_min: float, rec_max: float) -> float:
    """The release's normalising constant: the mid-range ``(max + min) / 2`` of S_rec over a set of images."""
    return 0.5 * (float(rec_min) + float(rec_max))
