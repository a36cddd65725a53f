"""Evaluation metrics (the maths): FID / rFID (Inception-v3 or any feature network), Inception Score, PSNR and SSIM,
multi-process aware. The loops that feed them, the reference-statistics files and the sample writer live in
`rae_hf.evaluation`."""

from .fid import (
    INCEPTION_FEATURE_DIM,
    INCEPTION_WEIGHTS_FILE,
    INCEPTION_WEIGHTS_URL,
    MIN_RELIABLE_FID_SAMPLES,
    FIDMetric,
    InceptionFeatureExtractor,
    check_fid_sample_count,
    frechet_distance,
    load_inception_state_dict,
    save_random_inception_weights,
)
from .inception_score import InceptionScore, inception_score
from .reconstruction import ReconstructionMetrics

__all__ = [
    "INCEPTION_FEATURE_DIM",
    "INCEPTION_WEIGHTS_FILE",
    "INCEPTION_WEIGHTS_URL",
    "MIN_RELIABLE_FID_SAMPLES",
    "FIDMetric",
    "InceptionFeatureExtractor",
    "InceptionScore",
    "ReconstructionMetrics",
    "check_fid_sample_count",
    "frechet_distance",
    "inception_score",
    "load_inception_state_dict",
    "save_random_inception_weights",
]
