"""Reference (real-image) statistics for the FID: computed from a dataset, or read from an ADM / torch-fidelity
`.npz`."""

from __future__ import annotations

import os

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.collate import is_empty_batch
from ..data.sharding import shard_loader
from ..metrics import FIDMetric, load_fid_stats, save_fid_stats
from ..metrics.fid import ArrayLike

__all__ = ["compute_reference_statistics", "load_reference_statistics"]


def load_reference_statistics(
    reference: str | os.PathLike | tuple[ArrayLike, ArrayLike],
) -> tuple[np.ndarray, np.ndarray]:
    """`(mu, sigma)` float64 from given statistics or an `.npz` holding `mu` and `sigma` (the layout of ADM's
    reference batches, e.g. `VIRTUAL_imagenet256_labeled.npz`, and of torch-fidelity's statistics files). The file is
    read with `allow_pickle=False`; a missing file or missing keys give an error naming the file."""
    if isinstance(reference, (str, os.PathLike)):
        if not os.path.isfile(reference):
            raise FileNotFoundError(f"FID reference statistics file not found: {os.fspath(reference)}")
        return load_fid_stats(reference)
    mu, sigma = reference
    return np.asarray(mu, dtype=np.float64), np.asarray(sigma, dtype=np.float64)


@torch.no_grad()
def compute_reference_statistics(
    dataset,
    collate_fn,
    accelerator,
    path: str | os.PathLike,
    batch_size: int = 64,
    num_samples: int | None = None,
    inception_weights: str | os.PathLike | None = None,
    num_workers: int = 0,
) -> int:
    """Inception statistics (`mu`, `sigma`) of `dataset`'s images (`pixel_values` in [0, 1]) saved to `path` (.npz);
    returns the image count. Every process scores its own unpadded share; the main process writes the file."""
    fid = FIDMetric(inception_weights=inception_weights).to(accelerator.device)
    loader = shard_loader(dataset, accelerator, collate_fn, batch_size, num_workers, num_samples)
    for batch in tqdm(loader, desc="FID statistics", disable=not accelerator.is_main_process):
        if not is_empty_batch(batch):
            fid.update(batch["pixel_values"].to(accelerator.device), real=True)
    mu, sigma = fid.real_statistics()
    count = int(accelerator.reduce(fid.real_features_num_samples.clone(), reduction="sum"))
    if accelerator.is_main_process:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        save_fid_stats(path, mu.cpu().numpy(), sigma.cpu().numpy())
    return count
