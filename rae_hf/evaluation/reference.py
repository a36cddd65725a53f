"""Reference (real-image) statistics for the FID: computed from a dataset, written and read as an ADM /
torch-fidelity `.npz` (`mu` `[D]`, `sigma` `[D, D]`, float64). The one reader of such files is
`load_reference_statistics`."""

from __future__ import annotations

import os

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.collate import is_empty_batch
from ..data.sharding import shard_loader
from ..metrics import FIDMetric
from ..metrics.fid import ArrayLike

__all__ = ["compute_reference_statistics", "load_reference_statistics", "save_reference_statistics"]


def _checked(mu: ArrayLike, sigma: ArrayLike, source: str) -> tuple[np.ndarray, np.ndarray]:
    """`(mu, sigma)` as float64 numpy arrays, with an error naming `source` unless they are `[D]` and `[D, D]`."""
    mu, sigma = (torch.as_tensor(value).detach().to("cpu", torch.float64).numpy() for value in (mu, sigma))
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{source}: expected mu [D] and sigma [D, D], got {mu.shape} and {sigma.shape}.")
    return mu, sigma


def save_reference_statistics(path: str | os.PathLike, mu: ArrayLike, sigma: ArrayLike) -> None:
    """Write `(mu, sigma)` as an ADM / torch-fidelity `.npz` (float64) at exactly `path` (no suffix appended)."""
    mu, sigma = _checked(mu, sigma, "FID reference statistics")
    with open(path, "wb") as file:  # a file object: numpy would otherwise append ".npz" to the name
        np.savez(file, mu=mu, sigma=sigma)


def load_reference_statistics(
    reference: str | os.PathLike | tuple[ArrayLike, ArrayLike],
) -> tuple[np.ndarray, np.ndarray]:
    """`(mu, sigma)` float64 from given statistics or an `.npz` holding `mu` and `sigma` (the layout of ADM's
    reference batches, e.g. `VIRTUAL_imagenet256_labeled.npz`, and of torch-fidelity's statistics files). The file is
    read with `allow_pickle=False`; a missing file, missing keys or wrong shapes give an error naming the file."""
    if not isinstance(reference, (str, os.PathLike)):
        return _checked(*reference, "FID reference statistics")
    source = os.fspath(reference)
    if not os.path.isfile(source):
        raise FileNotFoundError(f"FID reference statistics file not found: {source}")
    with np.load(source, allow_pickle=False) as stats:
        missing = {"mu", "sigma"} - set(stats.files)
        if missing:
            raise ValueError(
                f"{source} has no {sorted(missing)} array(s) (found {stats.files}); not an FID stats file."
            )
        return _checked(stats["mu"], stats["sigma"], source)


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
        save_reference_statistics(path, mu, sigma)
    return count
