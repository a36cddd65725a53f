"""Standalone reconstruction evaluation (`run_rae.py --do_eval`): rFID, PSNR and SSIM over a dataset."""

from __future__ import annotations

import os

import torch

from ..data.sharding import shard_loader
from ..metrics import RFIDEvaluator, check_fid_sample_count
from .reference import load_reference_statistics

__all__ = ["evaluate_reconstruction"]


@torch.no_grad()
def evaluate_reconstruction(
    model: torch.nn.Module,
    dataset,
    collate_fn,
    accelerator,
    batch_size: int = 64,
    num_samples: int | None = 10000,
    inception_weights: str | os.PathLike | None = None,
    reference_stats: str | os.PathLike | None = None,
    save_dir: str | os.PathLike | None = None,
    num_workers: int = 0,
) -> dict[str, float | int]:
    """rFID, PSNR and SSIM of `model(images).reconstruction` over `num_samples` images of `dataset`.

    The real side of the FID is the statistics of the same (center-cropped) images unless `reference_stats` names an
    `.npz` — use the validation images' own statistics for rFID, not the generation reference (that one inflates
    rFID). `save_dir` receives PNGs and an ADM-style `.npz` per process for external evaluators.
    """
    if hasattr(dataset, "__len__"):
        count = len(dataset) if num_samples is None else min(num_samples, len(dataset))
        check_fid_sample_count(count, "the evaluated split", "evaluate more images")
    model.to(accelerator.device).eval()
    evaluator = RFIDEvaluator(
        inception_weights=inception_weights,
        device=accelerator.device,
        autocast_dtype=torch.bfloat16 if accelerator.mixed_precision == "bf16" else None,
    )
    reference = load_reference_statistics(reference_stats) if reference_stats else None
    loader = shard_loader(dataset, accelerator, collate_fn, batch_size, num_workers, num_samples)
    return evaluator.evaluate(
        lambda images: model(images).reconstruction,
        loader,
        accelerator=accelerator,
        reference=reference,
        save_dir=save_dir,
    )
