"""Synthetic anomalies shared by the methods: Perlin masks, DRAEM texture paste, CutPaste, procedural textures."""

from ._rng import RandomState, as_generator
from .augment import color_jitter, draem_augment
from .cutpaste import cutpaste, cutpaste_normal, cutpaste_scar
from .draem import draem_paste
from .perlin import fractal_noise, perlin_mask, perlin_noise
from .textures import TEXTURE_KINDS, TextureSource, procedural_texture

__all__ = [
    "RandomState", "as_generator", "color_jitter", "draem_augment", "cutpaste", "cutpaste_normal", "cutpaste_scar",
    "draem_paste", "fractal_noise", "perlin_mask", "perlin_noise", "TEXTURE_KINDS", "TextureSource",
    "procedural_texture",
]
