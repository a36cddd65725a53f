"""Representation evaluation of frozen (or fine-tuned) vision encoders: linear probes, kNN, LoRA and full fine-tuning.

Flow: `load_encoder` -> `extract_features` / `FeatureCache` (one encoder pass per split, cached) -> `LinearHeadGrid` +
`train_heads` (every learning rate and feature variant in one pass) / `knn_evaluate` -> `ProbeClassifier`.
`import rae_hf` registers `ProbeClassifier` with `AutoConfig` and `AutoModelForImageClassification`.
"""

from rae_hf.probe.accuracy import accuracy_metrics, topk_accuracy
from rae_hf.probe.cache import DatasetCheck, FeatureCache, feature_cache_key, feature_description
from rae_hf.probe.classifier import ProbeClassifier, ProbeClassifierConfig
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

__all__ = [
    "DEFAULT_KS",
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
    "ProbeClassifier",
    "ProbeClassifierConfig",
    "ProbeEncoder",
    "ProbeEncoderOutput",
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
    "iter_components",
    "knn_evaluate",
    "knn_scores",
    "load_encoder",
    "register_token_layout",
    "topk_accuracy",
    "train_heads",
    "variant_tensor",
]
