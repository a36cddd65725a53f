"""Labeled image splits for probing: label-column detection, class names, transforms, dataset identity."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import datasets
import numpy as np

from rae_hf.data import with_image_transform
from rae_hf.data.transforms import probe_eval_transform, probe_train_transform
from rae_hf.probe.cache import DatasetCheck

__all__ = [
    "LABEL_COLUMN_CANDIDATES",
    "check_labels",
    "class_names",
    "dataset_check",
    "dataset_fingerprint",
    "detect_label_column",
    "id2label",
    "labeled_split",
    "probe_eval_transform",
    "probe_train_transform",
    "unseen_labels",
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


def check_labels(dataset: AnyDataset, label_column: str, split: str, folder: str | None = None) -> None:
    """Refuse a split whose examples have no label: a flat image folder (`folder`, read without class sub-folders)
    or a column with missing values. Map-style splits are checked whole, streamed ones on their first example."""
    if isinstance(dataset, datasets.Dataset):
        values = dataset.select_columns([label_column]).with_format(None)[:][label_column]
        missing = sum(value is None for value in values)
    else:
        first = next(iter(dataset.take(1)), {})
        missing = int(first.get(label_column) is None)
    if not missing:
        return
    if folder is not None:
        raise ValueError(
            f"{folder} has images without a class: a probe needs one sub-folder per class "
            f"({folder}/<class name>/<image>), e.g. {folder}/cat/001.png and {folder}/dog/002.png."
        )
    raise ValueError(
        f"The {split} split has {'examples' if missing > 1 else 'an example'} without a value in the label column "
        f"{label_column!r}; a probe needs every example labelled (pass --label_column_name for another column)."
    )


def unseen_labels(train_labels: Sequence[int], validation_labels: Sequence[int]) -> list[int]:
    """Classes present in validation but absent from train (no head can predict them)."""
    return sorted(set(int(label) for label in validation_labels) - set(int(label) for label in train_labels))


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
