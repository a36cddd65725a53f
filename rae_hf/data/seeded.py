"""Random augmentations that depend only on (seed, epoch, sample index), so that resuming at any step redraws
exactly the crops the uninterrupted run drew — whatever the number of data workers, processes or prefetched
batches (the global RNG state at a checkpoint no longer decides them)."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset, IterableDataset

_MIX = 0x9E3779B97F4A7C15  # 64-bit golden-ratio constant: spreads nearby (epoch, index) pairs apart
_MASK = (1 << 63) - 1


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A seed for one sample's augmentations, distinct for every (seed, epoch, index)."""
    value = seed & _MASK
    for part in (epoch, index):
        value = ((value ^ (part & _MASK)) * _MIX + part) & _MASK
    return value


class SeededAugmentationDataset(Dataset):
    """Wraps a map-style dataset whose transform draws from torch's global RNG: each item is produced under a
    private RNG seeded by `sample_seed(seed, epoch, index)`, leaving the global RNG untouched."""

    def __init__(self, dataset: Any, seed: int):
        self.dataset = dataset
        self.seed = seed
        # in shared memory: persistent data workers keep their copy of the dataset, yet see every new epoch
        self._epoch = torch.zeros((), dtype=torch.long).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, self.epoch, int(index)))
            return self.dataset[index]

    def __getattr__(self, name: str) -> Any:  # column_names, features... of the wrapped dataset
        if name in ("dataset", "seed", "_epoch") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


def seeded_augmentations(dataset: Any, seed: int) -> Any:
    """`SeededAugmentationDataset` for map-style datasets; streams (no index) and None are returned unchanged."""
    if dataset is None or isinstance(dataset, (IterableDataset, SeededAugmentationDataset)):
        return dataset
    if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        return dataset
    return SeededAugmentationDataset(dataset, seed)
