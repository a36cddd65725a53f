"""Labeled image splits for probing: label-column detection, class names, transforms, dataset identity."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import datasets
import numpy as np
import torch
from torchvision.transforms import v2

from rae_hf.data import with_image_transform
from rae_hf.probe.cache import DatasetCheck

__all__ = [
    "LABEL_COLUMN_CANDIDATES",
    "class_names",
    "dataset_check",
    "dataset_fingerprint",
    "detect_label_column",
    "id2label",
    "labeled_split",
    "probe_eval_transform",
    "probe_train_transform",
]

# Tried in order when --label_column_name is not given (ImageFolder/ImageNet, HF convention, CIFAR-100, others).
LABEL_COLUMN_CANDIDATES = ("label", "labels", "fine_label", "class", "target", "category")
LABEL_KEY = "label"  # what `ImageCollator` turns into `labels`

AnyDataset = datasets.Dataset | datasets.IterableDataset


def detect_label_column(dataset: AnyDataset, name: str | None = None) -> str:
    """The label column: `name` when given, else the first of `LABEL_COLUMN_CANDIDATES`, else the only `ClassLabel`
    column. Raises a `ValueError` listing the columns when none fits."""
    columns = dataset.column_names
    if columns is None:  # streamed dataset without declared features: look at the first example
        columns = list(next(iter(dataset.take(1)), {}))
    if name is not None:
        if name not in columns:
            raise ValueError(f"Label column {name!r} not found; available columns: {columns}.")
        return name
    for candidate in LABEL_COLUMN_CANDIDATES:
        if candidate in columns:
            return candidate
    features = dataset.features or {}
    class_labels = [column for column, feature in features.items() if isinstance(feature, datasets.ClassLabel)]
    if len(class_labels) == 1:
        return class_labels[0]
    raise ValueError(
        f"Could not find the label column; available columns: {columns}. Tried {list(LABEL_COLUMN_CANDIDATES)}"
        " and ClassLabel columns. Pass --label_column_name."
    )


def class_names(dataset: AnyDataset, label_column: str) -> list[str] | None:
    """Class names of a `ClassLabel` column, None for plain integer labels."""
    feature = (dataset.features or {}).get(label_column)
    return list(feature.names) if isinstance(feature, datasets.ClassLabel) else None


def labeled_split(dataset: AnyDataset, image_column: str, label_column: str, transform) -> AnyDataset:
    """`{"pixel_values", "label"}` examples (other columns dropped; the label renamed to what the collator expects)."""
    dataset = dataset.select_columns([image_column, label_column])
    if label_column != LABEL_KEY:
        dataset = dataset.rename_column(label_column, LABEL_KEY)
    return with_image_transform(dataset, transform, image_column, keep_columns=[LABEL_KEY])


def probe_eval_transform(image_size: int, crop_pct: float = 0.875) -> v2.Compose:
    """PIL image -> [0, 1] float tensor: bicubic resize of the shorter side to `image_size / crop_pct`, center crop
    (DINOv2/MAE evaluation: 256 then 224)."""
    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}.")
    resize = round(image_size / crop_pct)
    bicubic = v2.InterpolationMode.BICUBIC
    return v2.Compose(
        [
            v2.Resize(resize, interpolation=bicubic, antialias=True),
            v2.CenterCrop(image_size),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )


def probe_train_transform(image_size: int) -> v2.Compose:
    """Random-resized crop (bicubic) and horizontal flip: the DINOv2/MAE linear-probe training augmentation."""
    return v2.Compose(
        [
            v2.RandomResizedCrop(image_size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )


def dataset_fingerprint(dataset: AnyDataset, source: dict) -> str:
    """Content identity of a split: `datasets`' fingerprint for map-style splits (it follows the files and every
    transformation); the source description (`source`: data arguments, split name, seed) for streamed ones."""
    fingerprint = getattr(dataset, "_fingerprint", None)
    if isinstance(dataset, datasets.Dataset) and fingerprint:
        return fingerprint
    return "stream-" + hashlib.sha256(json.dumps(source, sort_keys=True, default=str).encode()).hexdigest()[:32]


def dataset_check(dataset: AnyDataset, label_column: str) -> DatasetCheck | None:
    """Row count and label digest of a map-style split (reads only the label column); None for streamed splits."""
    if not isinstance(dataset, datasets.Dataset):
        return None
    return DatasetCheck.from_labels(_label_array(dataset, label_column))


def id2label(dataset: AnyDataset, label_column: str, observed: Sequence[int] | None = None) -> dict[int, str]:
    """Class index -> name: the `ClassLabel` names, else `"0" ... str(max label)` over `observed` labels (read from
    the label column of a map-style split when not given)."""
    names = class_names(dataset, label_column)
    if names is not None:
        return dict(enumerate(names))
    if observed is None:
        if not isinstance(dataset, datasets.Dataset):
            raise ValueError(
                f"The streamed column {label_column!r} is not a ClassLabel: the number of classes is unknown before "
                "reading the whole stream. Use a dataset with ClassLabel labels or one that is not streamed."
            )
        observed = _label_array(dataset, label_column)
    labels = [int(label) for label in observed]
    if not labels or min(labels) < 0:
        raise ValueError(f"Labels of {label_column!r} must be non-negative class indices.")
    return {index: str(index) for index in range(max(labels) + 1)}


def _label_array(dataset: datasets.Dataset, label_column: str) -> np.ndarray:
    """The whole label column as one array (reads that column only; iterating a `Column` is much slower)."""
    return dataset.select_columns([label_column]).with_format("numpy")[:][label_column]
