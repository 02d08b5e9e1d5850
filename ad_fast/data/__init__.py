"""Image loading, datasets and the generated demo dataset."""

from .dataset import AnomalyDataset, Record, Sample
from .demo import DEMO_CATEGORIES, make_demo_dataset
from .images import ImageInput, load_image, read_image, read_mask, resize_image, save_image, to_image_batch
from .readers import BTAD, FORMATS, KSDD2, Folder, JsonlDataset, MVTecAD, VisA, open_dataset

__all__ = [
    "AnomalyDataset", "Record", "Sample", "DEMO_CATEGORIES", "make_demo_dataset", "ImageInput", "load_image",
    "read_image", "read_mask", "resize_image", "save_image", "to_image_batch", "BTAD", "FORMATS", "KSDD2", "Folder",
    "JsonlDataset", "MVTecAD", "VisA", "open_dataset",
]
