"""Shared image-data pipeline: decoding, transforms, dataset loading and collation."""

from rae_hf.data.collate import ImageCollator
from rae_hf.data.datasets import (
    DataArguments,
    ImageExampleTransform,
    imagefolder_data_files,
    load_image_splits,
    with_image_transform,
)
from rae_hf.data.images import BadImageError, load_rgb_image, to_rgb
from rae_hf.data.transforms import build_image_transform, default_resize_size

__all__ = [
    "BadImageError",
    "DataArguments",
    "ImageCollator",
    "ImageExampleTransform",
    "build_image_transform",
    "default_resize_size",
    "imagefolder_data_files",
    "load_image_splits",
    "load_rgb_image",
    "to_rgb",
    "with_image_transform",
]
