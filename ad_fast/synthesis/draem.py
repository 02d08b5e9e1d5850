"""DRAEM-style anomaly synthesis: paste an augmented texture into a normal image inside a Perlin mask."""

from __future__ import annotations

import torch

from ._rng import RandomState, as_generator
from .augment import draem_augment
from .perlin import perlin_mask
from .textures import TextureSource


def draem_paste(image: torch.Tensor, rng: RandomState = None, texture: torch.Tensor | TextureSource | None = None,
                beta_range: tuple[float, float] = (0.0, 0.8), augment: bool = True,
                **mask_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthesize an anomaly: ``out = image·(1-m) + ((1-β)·T + β·image)·m`` with β ~ U(beta_range).

    Args:
        image (Tensor[3, H, W]): float in [0, 1].
        texture: a ``[3, H, W]`` texture, a :class:`TextureSource`, or ``None`` (procedural textures).
        augment: apply three DRAEM augmenters to the texture first.
        mask_kwargs: passed to :func:`~ad_fast.synthesis.perlin_mask` (``scale_exponents``, ``max_rotation``, ...).

    Returns:
        (Tensor[3, H, W], Tensor[1, H, W]): the image with the anomaly, and its mask in {0, 1}.
    """
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image: expected a tensor [3, H, W], got {getattr(image, 'shape', type(image).__name__)}")
    rng = as_generator(rng)
    height, width = image.shape[-2:]
    if texture is None or isinstance(texture, TextureSource):
        source = texture if texture is not None else TextureSource(size=(height, width))
        texture = source.sample(rng)
    if tuple(texture.shape) != tuple(image.shape):
        from ..data.images import resize_image

        texture = resize_image(texture, (height, width))
    texture = texture.to(image)
    if augment:
        texture = draem_augment(texture, rng)
    mask = perlin_mask((height, width), rng, **mask_kwargs).to(image)
    beta = float(rng.uniform(*beta_range))
    out = image * (1 - mask) + ((1 - beta) * texture + beta * image) * mask
    return out, mask
