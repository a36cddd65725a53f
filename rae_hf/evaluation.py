"""Standalone evaluation of a reconstruction model (`run_rae.py --do_eval`) and FID reference statistics."""

from __future__ import annotations

import math
import os

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .metrics import FIDMetric, RFIDEvaluator, load_fid_stats, save_fid_stats, shard_for_process


def shard_loader(dataset, accelerator: Accelerator, collate_fn, batch_size: int, num_workers: int) -> DataLoader:
    """This process's unpadded shard (each image evaluated once over all processes)."""
    shard = shard_for_process(dataset, accelerator.process_index, accelerator.num_processes)
    return DataLoader(
        shard,
        batch_size=batch_size,
        collate_fn=collate_fn,
        num_workers=num_workers,
        pin_memory=accelerator.device.type == "cuda",
    )


def _per_process(num_samples: int | None, accelerator: Accelerator) -> int | None:
    return None if num_samples is None else math.ceil(num_samples / accelerator.num_processes)


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
    loader = shard_loader(dataset, accelerator, collate_fn, batch_size, num_workers)
    return evaluator.evaluate(
        lambda images: model(images).reconstruction,
        loader,
        accelerator=accelerator,
        reference=reference,
        max_samples=_per_process(num_samples, accelerator),
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
    limit, seen = _per_process(num_samples, accelerator), 0
    loader = shard_loader(dataset, accelerator, collate_fn, batch_size, num_workers)
    for batch in tqdm(loader, desc="FID statistics", disable=not accelerator.is_main_process):
        images = batch["pixel_values"].to(accelerator.device)
        if limit is not None:
            images = images[: limit - seen]
        fid.update(images, real=True)
        seen += images.shape[0]
        if limit is not None and seen >= limit:
            break
    mu, sigma = fid.real_statistics()
    count = int(fid.real_features_num_samples)
    if accelerator.is_main_process:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        save_fid_stats(path, mu.cpu().numpy(), sigma.cpu().numpy())
    return count
