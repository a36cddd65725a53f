"""Standalone evaluation of a reconstruction model (`run_rae.py --do_eval`) and FID reference statistics."""

from __future__ import annotations

import os

import datasets
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from .metrics import FIDMetric, RFIDEvaluator, load_fid_stats, save_fid_stats, shard_for_process


def first_items(dataset, count: int | None):
    """The first `count` items of a map-style or streaming dataset (all of them for None)."""
    if count is None:
        return dataset
    if isinstance(dataset, datasets.IterableDataset):
        return dataset.take(count)
    if isinstance(dataset, datasets.Dataset):
        return dataset.select(range(min(count, len(dataset))))
    return Subset(dataset, range(min(count, len(dataset))))


def shard_loader(
    dataset, accelerator: Accelerator, collate_fn, batch_size: int, num_workers: int, num_samples: int | None = None
) -> DataLoader:
    """This process's unpadded shard of the first `num_samples` items: the same images are scored whatever the number
    of processes, each exactly once."""
    shard = shard_for_process(first_items(dataset, num_samples), accelerator.process_index, accelerator.num_processes)
    return DataLoader(
        shard,
        batch_size=batch_size,
        collate_fn=collate_fn,
        num_workers=num_workers,
        pin_memory=accelerator.device.type == "cuda",
    )


@torch.no_grad()
def evaluate_reconstruction(
    model: torch.nn.Module,
    dataset,
    collate_fn,
    accelerator: Accelerator,
    batch_size: int = 64,
    num_samples: int | None = 10000,
    inception_weights: str | None = None,
    reference_stats: str | None = None,
    save_dir: str | None = None,
    num_workers: int = 0,
) -> dict[str, float | int]:
    """rFID, PSNR and SSIM of `model(images).reconstruction` over `num_samples` images of `dataset`.

    The real side of the FID is the statistics of the same (center-cropped) images unless `reference_stats` names an
    `.npz` — use the validation images' own statistics for rFID, not the generation reference (that one inflates
    rFID). `save_dir` receives PNGs and an ADM-style `.npz` per process for external evaluators.
    """
    model.to(accelerator.device).eval()
    evaluator = RFIDEvaluator(
        inception_weights=inception_weights,
        device=accelerator.device,
        autocast_dtype=torch.bfloat16 if accelerator.mixed_precision == "bf16" else None,
    )
    reference = load_fid_stats(reference_stats) if reference_stats else None
    loader = shard_loader(dataset, accelerator, collate_fn, batch_size, num_workers, num_samples)
    return evaluator.evaluate(
        lambda images: model(images).reconstruction,
        loader,
        accelerator=accelerator,
        reference=reference,
        save_dir=save_dir,
    )


@torch.no_grad()
def compute_reference_statistics(
    dataset,
    collate_fn,
    accelerator: Accelerator,
    path: str,
    batch_size: int = 64,
    num_samples: int | None = None,
    inception_weights: str | None = None,
    num_workers: int = 0,
) -> int:
    """Inception statistics (`mu`, `sigma`) of `dataset`'s images saved to `path` (.npz); returns the image count."""
    fid = FIDMetric(inception_weights=inception_weights).to(accelerator.device)
    loader = shard_loader(dataset, accelerator, collate_fn, batch_size, num_workers, num_samples)
    for batch in tqdm(loader, desc="FID statistics", disable=not accelerator.is_main_process):
        fid.update(batch["pixel_values"].to(accelerator.device), real=True)
    mu, sigma = fid.real_statistics()
    count = int(accelerator.reduce(fid.real_features_num_samples.clone(), reduction="sum"))
    if accelerator.is_main_process:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        save_fid_stats(path, mu.cpu().numpy(), sigma.cpu().numpy())
    return count
