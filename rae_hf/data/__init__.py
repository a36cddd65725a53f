"""Shared image-data pipeline: decoding, transforms, dataset loading, collation and per-process sharding."""

from rae_hf.data.collate import ImageCollator, is_empty_batch
from rae_hf.data.datasets import (
    DataArguments,
    ImageExampleTransform,
    imagefolder_data_files,
    load_image_splits,
    with_image_transform,
)
from rae_hf.data.images import MAX_ASPECT_RATIO, BadImageError, load_rgb_image, to_rgb
from rae_hf.data.sharding import first_items, process_range, shard_for_process, shard_loader
from rae_hf.data.transforms import (
    TRANSFORM_PRESETS,
    adm_center_crop,
    adm_center_crop_transform,
    build_image_transform,
    default_resize_size,
    image_transform,
    probe_eval_transform,
    probe_train_transform,
    resize_images,
    to_float_tensor,
)

__all__ = [
    "MAX_ASPECT_RATIO",
    "TRANSFORM_PRESETS",
    "BadImageError",
    "DataArguments",
    "ImageCollator",
    "ImageExampleTransform",
    "adm_center_crop",
    "adm_center_crop_transform",
    "build_image_transform",
    "default_resize_size",
    "first_items",
    "image_transform",
    "imagefolder_data_files",
    "is_empty_batch",
    "load_image_splits",
    "load_rgb_image",
    "probe_eval_transform",
    "probe_train_transform",
    "process_range",
    "resize_images",
    "shard_for_process",
    "shard_loader",
    "to_float_tensor",
    "to_rgb",
    "with_image_transform",
]
