"""Per-process shares of a dataset or an index range, each item in exactly one share and nothing padded.

Evaluation metrics summed over processes (FID, Inception Score, PSNR/SSIM) must see each image once: do not pass an
evaluation DataLoader through `accelerator.prepare`, which pads the last batch with repeated images (`even_batches`).
"""

from __future__ import annotations

from typing import Any

import datasets
import torch
from datasets.distributed import split_dataset_by_node
from torch.utils.data import DataLoader, Subset

__all__ = ["first_items", "process_range", "shard_for_process", "shard_loader"]


def process_range(count: int, process_index: int, num_processes: int) -> range:
    """This process's contiguous block of `range(count)`: the first `count % num_processes` blocks are one longer
    (11 items on 2 processes: 0-5 and 6-10), so the blocks in process order give `range(count)`."""
    if not 0 <= process_index < num_processes:
        raise ValueError(f"process_index={process_index} must be in [0, num_processes={num_processes}).")
    if count < 0:
        raise ValueError(f"count={count} must be >= 0.")
    base, extra = divmod(count, num_processes)
    start = process_index * base + min(process_index, extra)
    return range(start, start + base + (1 if process_index < extra else 0))


def shard_for_process(dataset: Any, process_index: int, num_processes: int) -> Any:
    """This process's share of `dataset`, each item in exactly one share and NOTHING padded or repeated.

    Map-style data are cut into the contiguous blocks of `process_range`: `datasets.Dataset.shard(contiguous=True)`,
    or a `torch.utils.data.Subset` for other datasets with `__len__` / `__getitem__`. A streaming
    `datasets.IterableDataset` goes through `datasets.distributed.split_dataset_by_node` (whole shards per process
    when they divide evenly, else every `num_processes`-th example). Other iterable datasets cannot be split here:
    shard them at the source.
    """
    if not 0 <= process_index < num_processes:
        raise ValueError(f"process_index={process_index} must be in [0, num_processes={num_processes}).")
    if isinstance(dataset, datasets.IterableDataset):
        return split_dataset_by_node(dataset, rank=process_index, world_size=num_processes)
    if isinstance(dataset, datasets.Dataset):
        return dataset.shard(num_shards=num_processes, index=process_index, contiguous=True)
    if isinstance(dataset, torch.utils.data.IterableDataset) or not (
        hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")
    ):
        raise TypeError(
            f"Cannot shard a {type(dataset).__name__}: give a map-style dataset (with __len__ and __getitem__) or a "
            "datasets.IterableDataset, or split the stream per process yourself without repeating items."
        )
    return Subset(dataset, process_range(len(dataset), process_index, num_processes))


def first_items(dataset: Any, count: int | None) -> Any:
    """The first `count` items of a map-style or streaming dataset (all of them for None)."""
    if count is None:
        return dataset
    if isinstance(dataset, datasets.IterableDataset):
        return dataset.take(count)
    if isinstance(dataset, datasets.Dataset):
        return dataset.select(range(min(count, len(dataset))))
    return Subset(dataset, range(min(count, len(dataset))))


def shard_loader(
    dataset: Any, accelerator, collate_fn, batch_size: int, num_workers: int = 0, num_samples: int | None = None
) -> DataLoader:
    """A DataLoader over this process's unpadded share of the first `num_samples` items of `dataset`: the same images
    are scored whatever the number of processes, each exactly once (`accelerator`: an `accelerate.Accelerator`)."""
    shard = shard_for_process(first_items(dataset, num_samples), accelerator.process_index, accelerator.num_processes)
    return DataLoader(
        shard,
        batch_size=batch_size,
        collate_fn=collate_fn,
        num_workers=num_workers,
        pin_memory=accelerator.device.type == "cuda",
    )
