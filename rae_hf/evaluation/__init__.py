"""Evaluation loops: reconstructions (rFID/PSNR/SSIM), generation (FID/IS of N samples from any sampler), FID
reference statistics, per-process sharding and the ADM `.npz`/PNG sample writer."""

from ..data.sharding import first_items, process_range, shard_for_process, shard_loader
from ..metrics.sample_writer import SampleWriter
from .generation import SampleFn, balanced_labels, evaluate_generation
from .reconstruction import evaluate_reconstruction
from .reference import compute_reference_statistics, load_reference_statistics

__all__ = [
    "SampleFn",
    "SampleWriter",
    "balanced_labels",
    "compute_reference_statistics",
    "evaluate_generation",
    "evaluate_reconstruction",
    "first_items",
    "load_reference_statistics",
    "process_range",
    "shard_for_process",
    "shard_loader",
]
