"""Evaluation metrics: FID / rFID (Inception-v3 or any feature network), PSNR and SSIM, multi-process aware."""

from .fid import (
    INCEPTION_FEATURE_DIM,
    INCEPTION_WEIGHTS_FILE,
    FIDMetric,
    InceptionFeatureExtractor,
    frechet_distance,
    load_fid_stats,
    save_fid_stats,
    save_random_inception_weights,
    shard_for_process,
)
from .reconstruction import ReconstructionMetrics
from .rfid import RFIDEvaluator

__all__ = [
    "INCEPTION_FEATURE_DIM",
    "INCEPTION_WEIGHTS_FILE",
    "FIDMetric",
    "InceptionFeatureExtractor",
    "RFIDEvaluator",
    "ReconstructionMetrics",
    "frechet_distance",
    "load_fid_stats",
    "save_fid_stats",
    "save_random_inception_weights",
    "shard_for_process",
]
