"""Image loading, datasets and synthetic anomalies."""

from .images import ImageInput, load_image, to_image_batch

__all__ = ["ImageInput", "load_image", "to_image_batch"]
