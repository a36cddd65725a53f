"""Dataset arguments, loading of train/validation image splits and per-example image transforms."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import datasets
import torch
from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder
from PIL import Image

from rae_hf.data.images import BadImageError, load_rgb_image

__all__ = [
    "DataArguments",
    "ImageExampleTransform",
    "imagefolder_data_files",
    "load_image_splits",
    "with_image_transform",
]

logger = logging.getLogger(__name__)

AnyDataset = datasets.Dataset | datasets.IterableDataset
AnyDatasetDict = datasets.DatasetDict | datasets.IterableDatasetDict

_SAVED_DATASET_MARKERS = ("dataset_dict.json", "dataset_info.json")
_IMAGE_EXTENSIONS = frozenset(extension.lower() for extension in ImageFolder.EXTENSIONS)
_COMMON_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif")
_NUM_HASH_BUCKETS = 10_000
_MAX_STREAM_SHARDS = 64
_WARN_FIRST = 10
_WARN_EVERY = 100


@dataclass
class DataArguments:
    """Where the images come from and how they are split; parsable by ``transformers.HfArgumentParser``."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Hub dataset id or local path understood by datasets.load_dataset; a folder written by "
            "save_to_disk is read with load_from_disk. Exclusive with --train_dir."
        },
    )
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "Dataset configuration name (only with --dataset_name)."}
    )
    train_dir: str | None = field(
        default=None,
        metadata={"help": "Folder of training images (class sub-folders optional), read with the imagefolder builder."},
    )
    validation_dir: str | None = field(
        default=None, metadata={"help": "Folder of validation images (only with --train_dir)."}
    )
    image_column_name: str = field(default="image", metadata={"help": "Name of the column holding the images."})
    train_split_name: str = field(default="train", metadata={"help": "Name of the training split."})
    validation_split_name: str = field(
        default="validation",
        metadata={"help": "Name of the validation split; when absent, one is held out of the training split."},
    )
    validation_fraction: float = field(
        default=0.2,
        metadata={"help": "Fraction of the training split held out (seed-fixed) when there is no validation split."},
    )
    streaming: bool = field(default=False, metadata={"help": "Stream the dataset instead of caching it to disk."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where datasets caches downloads and Arrow files."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N training examples (debugging, quick runs)."}
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep only the first N validation examples."})
    image_size: int | None = field(
        default=None, metadata={"help": "Crop size in pixels; None lets the caller or the model decide."}
    )
    resize_size: int | None = field(
        default=None, metadata={"help": "Shorter-side resize before the random train crop; default 1.5x image_size."}
    )
    max_bad_image_fraction: float = field(
        default=0.05,
        metadata={
            "help": "Stop with an error once more than max(8, this fraction of the images seen) were undecodable "
            "(counted per data-loading process)."
        },
    )
    dataloader_shuffle_buffer: int = field(
        default=10_000, metadata={"help": "Shuffle buffer size for the streamed training split."}
    )

    def __post_init__(self) -> None:
        """Reject inconsistent or out-of-range values with a message naming the option."""
        if (self.dataset_name is None) == (self.train_dir is None):
            raise ValueError("Give exactly one of --dataset_name or --train_dir.")
        if self.validation_dir is not None and self.train_dir is None:
            raise ValueError("--validation_dir needs --train_dir.")
        if self.dataset_config_name is not None and self.dataset_name is None:
            raise ValueError("--dataset_config_name needs --dataset_name.")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"--validation_fraction must be in (0, 1), got {self.validation_fraction}.")
        if not 0.0 <= self.max_bad_image_fraction <= 1.0:
            raise ValueError(f"--max_bad_image_fraction must be in [0, 1], got {self.max_bad_image_fraction}.")
        for name in ("max_train_samples", "max_eval_samples", "image_size", "resize_size", "dataloader_shuffle_buffer"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"--{name} must be positive, got {value}.")
        if self.image_size is not None and self.resize_size is not None and self.resize_size < self.image_size:
            raise ValueError(f"--resize_size ({self.resize_size}) must be >= --image_size ({self.image_size}).")


def load_image_splits(args: DataArguments, seed: int = 42) -> AnyDatasetDict:
    """Load ``{"train", "validation"}`` splits whose image column holds undecoded ``{"bytes", "path"}`` cells.

    Without a validation split, ``validation_fraction`` of train is held out: map-style datasets use
    ``train_test_split(seed=seed)``; streamed ones put an example in validation when a seeded hash of its
    image (file bytes, or the path when bytes are not embedded) falls in the lowest ``validation_fraction``
    of buckets. That streamed split is approximate in size but deterministic and independent of order,
    sharding and workers; both splits read the whole stream. ``max_*_samples`` keep the first examples, and
    a streamed train split is shuffled with a ``dataloader_shuffle_buffer`` buffer (reseeded per epoch).
    """
    raw = _load_raw_splits(args)
    if args.train_split_name not in raw:
        raise ValueError(
            f"Split {args.train_split_name!r} not found; available splits: {sorted(raw)}. "
            "Pass --train_split_name with one of them."
        )
    train = _prepare_split(raw[args.train_split_name], args.image_column_name)
    if args.validation_split_name in raw:
        validation = _prepare_split(raw[args.validation_split_name], args.image_column_name)
    else:
        logger.info(
            "No %r split: holding out %.1f%% of %r for validation (seed %d).",
            args.validation_split_name,
            100 * args.validation_fraction,
            args.train_split_name,
            seed,
        )
        train, validation = _hold_out(train, args.validation_fraction, args.image_column_name, seed)
    for name, split in (("train", train), ("validation", validation)):
        if isinstance(split, datasets.Dataset) and len(split) == 0:
            raise ValueError(f"The {name} split of {_describe_source(args)} has no examples.")
    train = _take_first(train, args.max_train_samples)
    validation = _take_first(validation, args.max_eval_samples)
    if isinstance(train, datasets.IterableDataset):
        train = train.shuffle(seed=seed, buffer_size=args.dataloader_shuffle_buffer)
        return datasets.IterableDatasetDict({"train": train, "validation": validation})
    return datasets.DatasetDict({"train": train, "validation": validation})


def with_image_transform(
    dataset: AnyDataset,
    transform: Callable[[Image.Image], torch.Tensor],
    image_column: str,
    keep_columns: Sequence[str] = (),
) -> AnyDataset:
    """Lazily turn each example into ``{"pixel_values": Tensor | None, **keep_columns}``.

    Undecodable images give ``None`` (and a rate-limited warning) instead of an exception, so
    :class:`~rae_hf.data.collate.ImageCollator` can drop and count them. All other columns are dropped.
    """
    example_transform = ImageExampleTransform(transform, image_column, keep_columns)
    columns = [image_column, *keep_columns]
    known = dataset.column_names
    missing = [name for name in columns if known is not None and name not in known]
    if missing:
        raise ValueError(f"Columns {missing} not found; available columns: {known}.")
    if isinstance(dataset, datasets.IterableDataset):
        return dataset.select_columns(columns).map(example_transform, remove_columns=[image_column])
    return dataset.with_transform(example_transform.apply_to_batch, columns=columns)


class ImageExampleTransform:
    """Picklable per-example decode + transform; logs undecodable images instead of raising."""

    def __init__(
        self, transform: Callable[[Image.Image], torch.Tensor], image_column: str, keep_columns: Sequence[str] = ()
    ) -> None:
        self.transform = transform
        self.image_column = image_column
        self.keep_columns = tuple(keep_columns)
        self.num_bad = 0

    def __call__(self, example: dict[str, Any]) -> dict[str, Any]:
        """Transform one example."""
        output = {name: example[name] for name in self.keep_columns}
        output["pixel_values"] = self._pixel_values(example[self.image_column])
        return output

    def apply_to_batch(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        """Transform a column-wise batch (the ``Dataset.with_transform`` calling convention)."""
        size = len(batch[self.image_column])
        outputs = [self({name: values[index] for name, values in batch.items()}) for index in range(size)]
        return {name: [output[name] for output in outputs] for name in ("pixel_values", *self.keep_columns)}

    def _pixel_values(self, value: Any) -> torch.Tensor | None:
        """Decoded, transformed image, or ``None`` when it cannot be decoded."""
        try:
            return self.transform(load_rgb_image(value))
        except BadImageError as err:
            self.num_bad += 1
            if self.num_bad <= _WARN_FIRST or self.num_bad % _WARN_EVERY == 0:
                logger.warning("Skipping undecodable image (%d so far in this process): %s", self.num_bad, err)
            return None


def _load_raw_splits(args: DataArguments) -> AnyDatasetDict:
    """Load every split of the configured source, streamed or not."""
    if args.train_dir is not None:
        _check_image_folder(args.train_dir, "--train_dir")
        splits = {args.train_split_name: args.train_dir}
        if args.validation_dir is not None:
            _check_image_folder(args.validation_dir, "--validation_dir")
            splits[args.validation_split_name] = args.validation_dir
        return datasets.load_dataset(
            "imagefolder", data_files=imagefolder_data_files(splits), cache_dir=args.cache_dir, streaming=args.streaming
        )
    if _is_saved_dataset(args.dataset_name):
        if args.dataset_config_name is not None:
            raise ValueError("--dataset_config_name cannot be used with a folder written by save_to_disk.")
        return _from_disk(args.dataset_name, args.train_split_name, args.streaming)
    return datasets.load_dataset(
        args.dataset_name, args.dataset_config_name, cache_dir=args.cache_dir, streaming=args.streaming
    )


def _describe_source(args: DataArguments) -> str:
    if args.train_dir is not None:
        return f"--train_dir {args.train_dir}" + (
            f" / --validation_dir {args.validation_dir}" if args.validation_dir else ""
        )
    return f"--dataset_name {args.dataset_name}"


def _check_image_folder(folder: str, argument: str) -> None:
    """Raise naming ``argument`` and ``folder`` when it is missing or holds no image file (searched recursively, up to
    the first one), instead of the builder's "corresponds to no data"."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{argument} {folder}: no such folder.")
    for _, _, files in os.walk(folder):
        if any(os.path.splitext(name)[1].lower() in _IMAGE_EXTENSIONS for name in files):
            return
    raise ValueError(
        f"{argument} {folder} holds no image file (searched recursively for {', '.join(sorted(_COMMON_EXTENSIONS))}, "
        "...): point it at a folder of images or of class sub-folders of images."
    )


def imagefolder_data_files(split_dirs: dict[str, str]) -> dict[str, str]:
    """``data_files`` for the ``imagefolder`` builder: every file under each split's folder, recursively."""
    return {split: os.path.join(folder, "**") for split, folder in split_dirs.items()}


def _is_saved_dataset(path: str) -> bool:
    """Whether ``path`` is a local folder written by ``save_to_disk``."""
    return any(os.path.isfile(os.path.join(path, marker)) for marker in _SAVED_DATASET_MARKERS)


def _empty_saved_splits(path: str) -> list[str]:
    """Splits (``"."`` for a single Dataset) of a ``save_to_disk`` folder that hold no data file: ``load_from_disk``
    fails on those with an IndexError."""
    folders = ["."]
    if os.path.isfile(os.path.join(path, "dataset_dict.json")):
        with open(os.path.join(path, "dataset_dict.json")) as file:
            folders = list(json.load(file).get("splits", []))
    empty = []
    for folder in folders:
        state = os.path.join(path, folder, "state.json")
        if os.path.isfile(state):
            with open(state) as file:
                if not json.load(file).get("_data_files"):
                    empty.append(folder)
    return empty


def _from_disk(path: str, single_split_name: str, streaming: bool) -> AnyDatasetDict:
    """``load_from_disk``; a single saved Dataset becomes the train split, streaming converts to iterable."""
    empty = _empty_saved_splits(path)
    if empty:
        which = "it" if empty == ["."] else f"its split(s) {empty}"
        raise ValueError(f"The saved dataset {path} (--dataset_name) is empty: {which} hold(s) no rows.")
    loaded = datasets.load_from_disk(path)
    splits = loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict({single_split_name: loaded})
    if not streaming:
        return splits
    return datasets.IterableDatasetDict(
        {
            name: split.to_iterable_dataset(num_shards=max(1, min(len(split), _MAX_STREAM_SHARDS)))
            for name, split in splits.items()
        }
    )


def _prepare_split(split: AnyDataset, image_column: str) -> AnyDataset:
    """Check the image column exists and disable its decoding by ``datasets``."""
    columns = split.column_names
    if columns is None:  # streamed dataset without declared features: look at the first example
        columns = list(next(iter(split.take(1)), {}))
    if image_column not in columns:
        raise ValueError(
            f"Image column {image_column!r} not found; available columns: {columns}. "
            "Pass --image_column_name with one of them."
        )
    return split.cast_column(image_column, datasets.Image(decode=False))


def _hold_out(split: AnyDataset, fraction: float, image_column: str, seed: int) -> tuple[AnyDataset, AnyDataset]:
    """Split off a deterministic validation part (see :func:`load_image_splits`)."""
    if isinstance(split, datasets.IterableDataset):
        in_split = partial(_in_hash_split, image_column=image_column, fraction=fraction, seed=seed)
        return split.filter(partial(in_split, validation=False)), split.filter(partial(in_split, validation=True))
    if len(split) < 2:
        raise ValueError(f"Cannot hold out a validation split from {len(split)} example(s); provide one.")
    parts = split.train_test_split(test_size=fraction, seed=seed)
    return parts["train"], parts["test"]


def _in_hash_split(example: dict[str, Any], image_column: str, fraction: float, seed: int, validation: bool) -> bool:
    """Whether the seeded hash of an example's image puts it in the requested side of the split."""
    cell = example[image_column]
    key = cell["bytes"] if cell["bytes"] is not None else str(cell["path"]).encode()
    digest = hashlib.blake2b(key, digest_size=8, salt=seed.to_bytes(8, "little", signed=True)).digest()
    bucket = int.from_bytes(digest, "little") % _NUM_HASH_BUCKETS
    return (bucket < fraction * _NUM_HASH_BUCKETS) == validation


def _take_first(split: AnyDataset, limit: int | None) -> AnyDataset:
    """Keep the first ``limit`` examples (all when ``limit`` is None)."""
    if limit is None:
        return split
    if isinstance(split, datasets.IterableDataset):
        return split.take(limit)
    return split.select(range(min(limit, len(split))))
