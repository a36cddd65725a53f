"""Evaluation metrics: FID / rFID (Inception-v3 or any feature network), Inception Score, PSNR and SSIM,
multi-process aware; the ADM `.npz`/PNG sample writer."""

from .fid import (
    INCEPTION_FEATURE_DIM,
    INCEPTION_WEIGHTS_FILE,
    INCEPTION_WEIGHTS_URL,
    MIN_RELIABLE_FID_SAMPLES,
    FIDMetric,
    InceptionFeatureExtractor,
    check_fid_sample_count,
    frechet_distance,
    load_fid_stats,
    load_inception_state_dict,
    save_fid_stats,
    save_random_inception_weights,
    shard_for_process,
)
from .inception_score import InceptionScore, inception_score
from .reconstruction import ReconstructionMetrics
from .rfid import RFIDEvaluator
from .sample_writer import SampleWriter

__all__ = [
    "INCEPTION_FEATURE_DIM",
    "INCEPTION_WEIGHTS_FILE",
    "INCEPTION_WEIGHTS_URL",
    "MIN_RELIABLE_FID_SAMPLES",
    "FIDMetric",
    "InceptionFeatureExtractor",
    "InceptionScore",
    "RFIDEvaluator",
    "ReconstructionMetrics",
    "SampleWriter",
    "check_fid_sample_count",
    "frechet_distance",
    "inception_score",
    "load_fid_stats",
    "load_inception_state_dict",
    "save_fid_stats",
    "save_random_inception_weights",
    "shard_for_process",
]
