"""Text datasets for the text-as-pixels task: hub datasets, local `.txt` (one text per line) / `.jsonl` files, or
streams, turned lazily into `{"pixel_values": [C, H, W] in [0, 1], "labels": class}` examples by a codec."""

from __future__ import annotations

import os
import random
from typing import Any

import datasets

from .codec import TextPixelCodec

LOCAL_BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json"}


def _load(path_or_name: str, config_name: str | None, streaming: bool, cache_dir: str | None):
    suffix = os.path.splitext(path_or_name)[1]
    if os.path.isfile(path_or_name) and suffix in LOCAL_BUILDERS:
        return datasets.load_dataset(
            LOCAL_BUILDERS[suffix], data_files={"train": path_or_name}, streaming=streaming, cache_dir=cache_dir
        )["train"]
    return datasets.load_dataset(path_or_name, config_name, streaming=streaming, cache_dir=cache_dir)


def load_text_splits(data_args, validation_file: str | None = None, seed: int = 0, text_column: str = "text"):
    """`{"train", "validation"}` text splits from `data_args.dataset_name` (hub id, folder or `.txt`/`.jsonl` file).

    Validation: `validation_file`, else the dataset's `validation_split_name`, else `validation_fraction` held out
    (seeded; for streams the first `max_eval_samples or 1000` texts). Empty texts are kept (they round-trip too).
    """
    source = data_args.dataset_name
    if source is None:
        raise ValueError("The text task reads --dataset_name (hub id, or a local .txt/.jsonl file).")
    loaded = _load(source, data_args.dataset_config_name, data_args.streaming, data_args.cache_dir)
    if isinstance(loaded, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        train = loaded[data_args.train_split_name]
        validation = loaded.get(data_args.validation_split_name)
    else:
        train, validation = loaded, None
    if validation_file is not None:
        validation = _load(validation_file, None, data_args.streaming, data_args.cache_dir)
    if validation is None:
        if isinstance(train, datasets.IterableDataset):
            count = data_args.max_eval_samples or 1000
            train, validation = train.skip(count), train.take(count)
        else:
            parts = train.train_test_split(test_size=data_args.validation_fraction, seed=seed)
            train, validation = parts["train"], parts["test"]
    for name, split in (("train", train), ("validation", validation)):
        columns = split.column_names
        if columns is not None and text_column not in columns:
            raise ValueError(f"The {name} split has no column {text_column!r} (columns: {columns}); set --text_column.")
    if data_args.max_train_samples is not None:
        train = _take(train, data_args.max_train_samples)
    if data_args.max_eval_samples is not None:
        validation = _take(validation, data_args.max_eval_samples)
    return {"train": train, "validation": validation}


def _take(split, count: int):
    if isinstance(split, datasets.IterableDataset):
        return split.take(count)
    return split.select(range(min(count, len(split))))


class TextToPixels:
    """Per-batch transform (`Dataset.with_transform`) or per-example map: texts -> codec images (+ labels)."""

    def __init__(self, codec: TextPixelCodec, text_column: str = "text", label_column: str | None = None):
        self.codec, self.text_column, self.label_column = codec, text_column, label_column

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        images = self.codec.encode([text or "" for text in batch[self.text_column]])
        output: dict[str, list[Any]] = {"pixel_values": list(images)}
        if self.label_column is not None:
            output["label"] = [int(v) for v in batch[self.label_column]]
        return output


def with_text_pixels(split, codec: TextPixelCodec, text_column: str = "text", label_column: str | None = None):
    """The split as `{"pixel_values", "label"?}` examples, encoded lazily."""
    transform = TextToPixels(codec, text_column, label_column)
    if isinstance(split, datasets.IterableDataset):
        return split.map(transform, batched=True, remove_columns=split.column_names)
    return split.with_transform(transform)


WORDS = (
    "the a one every small large red blue green quick lazy bright dark old new cat dog fox bird fish tree river "
    "stone cloud star moon sun house road city field runs jumps sleeps sings flies swims grows shines falls waits "
    "over under near beside through across quietly slowly happily today tonight again"
).split()


def make_quickstart_texts(folder: str, num_train: int = 256, num_validation: int = 64, seed: int = 0) -> dict:
    """Write deterministic short sentences to `folder/{train,validation}.txt` (once); returns the paths."""
    paths = {split: os.path.join(folder, f"{split}.txt") for split in ("train", "validation")}
    if all(os.path.isfile(p) for p in paths.values()):
        return paths
    os.makedirs(folder, exist_ok=True)
    rng = random.Random(seed)
    for split, count in (("train", num_train), ("validation", num_validation)):
        lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 7))) for _ in range(count)]
        with open(paths[split] + ".tmp", "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(paths[split] + ".tmp", paths[split])
    return paths


__all__ = ["TextToPixels", "load_text_splits", "make_quickstart_texts", "with_text_pixels"]
