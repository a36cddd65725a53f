"""Representation evaluation of frozen (or fine-tuned) vision encoders: linear probes, kNN, LoRA and full fine-tuning.

Flow: `load_encoder` -> `extract_features` / `FeatureCache` (one encoder pass per split, cached, checksummed) ->
`linear_probe` (default: L-BFGS logistic regression with an L2 sweep selected on held-out train, `logistic`; or the
`LinearHeadGrid` + `train_heads` SGD grid of the DINOv2/MAE protocols, `protocols`) with its warnings
(`diagnostics`) / `knn_evaluate` -> `ProbeClassifier`. `runner` strings these into a run (`frozen_probe`), as
`run_probe.py` and DINO's before/after kNN call it.
`import rae_hf` registers `ProbeClassifier` with `AutoConfig` and `AutoModelForImageClassification`.
"""

from rae_hf.models.probe import ProbeClassifier, ProbeClassifierConfig
from rae_hf.probe.accuracy import accuracy_metrics, topk_accuracy
from rae_hf.probe.cache import DatasetCheck, FeatureCache, feature_cache_key, feature_description
from rae_hf.probe.encoders import (
    TOKEN_LAYOUTS,
    ProbeEncoder,
    ProbeEncoderOutput,
    TokenLayout,
    load_encoder,
    register_token_layout,
)
from rae_hf.probe.features import (
    POOLINGS,
    CachedFeatureSource,
    ComponentSpec,
    EncoderFeatureSource,
    FeatureSet,
    FeatureVariant,
    check_variants,
    compute_components,
    extract_features,
    feature_variants,
    iter_components,
    variant_tensor,
)
from rae_hf.probe.heads import (
    DINOV2_LEARNING_RATES,
    LARS,
    HeadSpec,
    HeadTrainingResult,
    LinearHeadGrid,
    build_head_optimizer,
    evaluate_heads,
    train_heads,
)
from rae_hf.probe.knn import DEFAULT_KS, knn_evaluate, knn_scores
from rae_hf.probe.linear import LinearProbeResult, linear_probe
from rae_hf.probe.logistic import DEFAULT_L2_GRID, LogisticFit, Standardizer, fit_logistic_regression, sweep_l2

__all__ = [
    "DEFAULT_KS",
    "DEFAULT_L2_GRID",
    "DINOV2_LEARNING_RATES",
    "LARS",
    "POOLINGS",
    "TOKEN_LAYOUTS",
    "CachedFeatureSource",
    "ComponentSpec",
    "DatasetCheck",
    "EncoderFeatureSource",
    "FeatureCache",
    "FeatureSet",
    "FeatureVariant",
    "HeadSpec",
    "HeadTrainingResult",
    "LinearHeadGrid",
    "LinearProbeResult",
    "LogisticFit",
    "ProbeClassifier",
    "ProbeClassifierConfig",
    "ProbeEncoder",
    "ProbeEncoderOutput",
    "Standardizer",
    "TokenLayout",
    "accuracy_metrics",
    "build_head_optimizer",
    "check_variants",
    "compute_components",
    "evaluate_heads",
    "extract_features",
    "feature_cache_key",
    "feature_description",
    "feature_variants",
    "fit_logistic_regression",
    "iter_components",
    "knn_evaluate",
    "knn_scores",
    "linear_probe",
    "load_encoder",
    "register_token_layout",
    "sweep_l2",
    "topk_accuracy",
    "train_heads",
    "variant_tensor",
]
