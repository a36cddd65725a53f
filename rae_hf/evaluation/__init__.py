"""Evaluation loops: reconstructions (rFID/PSNR/SSIM), generation (FID/IS of N samples from any sampler), FID
reference statistics (the one `.npz` reader and writer) and the ADM `.npz`/PNG sample writer. The metrics they feed
live in `rae_hf.metrics`; per-process sharding in `rae_hf.data`."""

from .generation import SampleFn, balanced_labels, evaluate_generation
from .reconstruction import RFIDEvaluator, evaluate_reconstruction
from .reference import compute_reference_statistics, load_reference_statistics, save_reference_statistics
from .sample_writer import SampleWriter

__all__ = [
    "RFIDEvaluator",
    "SampleFn",
    "SampleWriter",
    "balanced_labels",
    "compute_reference_statistics",
    "evaluate_generation",
    "evaluate_reconstruction",
    "load_reference_statistics",
    "save_reference_statistics",
]
