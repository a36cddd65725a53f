"""Reconstruction evaluation: rFID, PSNR and SSIM of an autoencoder's reconstructions in one pass over the data
(`RFIDEvaluator`, multi-process aware), and over a dataset (`evaluate_reconstruction`, `run_rae.py --do_eval`)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..data.sharding import shard_loader
from ..data.transforms import resize_images
from ..metrics import FIDMetric, InceptionFeatureExtractor, ReconstructionMetrics, check_fid_sample_count
from ..metrics.fid import ArrayLike
from .reference import load_reference_statistics
from .sample_writer import SampleWriter

__all__ = ["RFIDEvaluator", "evaluate_reconstruction"]


def _sum_over_processes(count: int, device: torch.device) -> int:
    """`count` summed over the processes of the default process group (as torchmetrics syncs its states)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return count
    total = torch.tensor(count, dtype=torch.int64, device=device)
    torch.distributed.all_reduce(total)
    return int(total)


class RFIDEvaluator:
    """Reconstruction FID (rFID), PSNR and SSIM of `reconstruct_fn` over a stream of image batches.

    Real side of the FID: the original images (the ADM protocol: statistics of the same center-cropped images), or
    given reference statistics. Fake side: the reconstructions. The feature network is built once and reused by
    every `evaluate` call.

    Args:
        feature: module mapping [0, 1] images to `[B, D]` features; default: the FID Inception-v3.
        inception_weights: local FID Inception weights for the default feature (None downloads them).
        device: where images, reconstructions and metrics live when `evaluate` gets no accelerator.
        autocast_dtype: e.g. `torch.bfloat16` to run `reconstruct_fn` under autocast (features stay float32).
    """

    def __init__(
        self,
        feature: nn.Module | None = None,
        inception_weights: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        autocast_dtype: torch.dtype | None = None,
    ):
        if feature is not None and inception_weights is not None:
            raise ValueError("inception_weights applies to the default Inception feature only; got a feature module.")
        self.feature = feature if feature is not None else InceptionFeatureExtractor(inception_weights)
        self.device = torch.device(device)
        self.autocast_dtype = autocast_dtype

    @torch.no_grad()
    def evaluate(
        self,
        reconstruct_fn: Callable[[Tensor], Tensor],
        batches: Iterable[dict],
        accelerator=None,
        reference: tuple[ArrayLike, ArrayLike] | None = None,
        max_samples: int | None = None,
        save_dir: str | os.PathLike | None = None,
    ) -> dict[str, float | int]:
        """Run over `batches` of `{"pixel_values": [B, 3, H, W] in [0, 1]}`; returns rfid, psnr, ssim, num_samples.

        `reconstruct_fn(images)` returns `[B, 3, H', W']` (clamped to [0, 1] here); when its size differs, the
        originals are resized to it (`rae_hf.data.resize_images`) for every metric. `reference=(mu, sigma)` (e.g.
        `load_reference_statistics`) replaces the real side. `max_samples` caps the images of THIS process.

        Multi-process (`accelerator` given, or torch.distributed initialized): each process passes its own shard of
        the data WITHOUT padding (`shard_for_process`; not a DataLoader prepared by Accelerate, which repeats
        images) and every process must call `evaluate` (the final sync is a collective). The returned values are
        over all processes' images.

        `save_dir`: each process writes its reconstructions as `rank<r>_<i>.png` (`i` counts that process's images
        from 0) and `reconstructions_rank<r>.npz` (`arr_0` uint8 `[N_r, H', W', 3]`, the ADM sample-batch layout).
        With contiguous shards, concatenating the ranks in order restores the dataset order. Saving copies every
        batch to the host.
        """
        if max_samples is not None and max_samples < 1:
            raise ValueError(f"max_samples={max_samples} must be >= 1 (or None for all images).")
        device = accelerator.device if accelerator is not None else self.device
        if accelerator is not None:
            process_index, show_progress = accelerator.process_index, accelerator.is_main_process
        else:
            distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
            process_index = torch.distributed.get_rank() if distributed else 0
            show_progress = process_index == 0
        fid = FIDMetric(feature=self.feature).to(device)
        if reference is not None:
            fid.set_real_statistics(*reference)
        scores = ReconstructionMetrics().to(device)
        count = 0
        writer = SampleWriter(save_dir, process_index, name="reconstructions") if save_dir is not None else None
        with writer if writer is not None else contextlib.nullcontext():
            for batch in tqdm(batches, desc="rFID", disable=not show_progress):
                images = batch["pixel_values"]
                if images.shape[0] == 0:  # every image of the batch was undecodable (counted by the collator)
                    continue
                if not images.is_floating_point():
                    raise ValueError(f"pixel_values must be float images in [0, 1], got dtype {images.dtype}.")
                images = images.to(device, non_blocking=True).float()
                if max_samples is not None:
                    images = images[: max_samples - count]
                with torch.autocast(device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
                    reconstructions = reconstruct_fn(images)
                reconstructions = reconstructions.float().clamp(0, 1)
                if reconstructions.ndim != 4 or reconstructions.shape[:2] != images.shape[:2]:
                    raise ValueError(
                        f"reconstruct_fn returned shape {tuple(reconstructions.shape)} for images of shape "
                        f"{tuple(images.shape)}; expected [B, 3, H', W']."
                    )
                images = resize_images(images, reconstructions.shape[-2:])
                if reference is None:
                    fid.update(images, real=True)
                fid.update(reconstructions, real=False)
                scores.update(reconstructions, images)
                if writer is not None:
                    writer.write(reconstructions)
                count += images.shape[0]
                if max_samples is not None and count >= max_samples:
                    break
            if writer is not None:
                writer.finish()
        reconstruction_scores = scores.compute()
        return {
            "rfid": float(fid.compute()),
            "psnr": float(reconstruction_scores["psnr"]),
            "ssim": float(reconstruction_scores["ssim"]),
            "num_samples": _sum_over_processes(count, device),
        }


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
