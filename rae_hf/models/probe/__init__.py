"""Probe classifier (a backbone, a feature variant and a linear head), registered with the Auto classes."""

from transformers import AutoConfig, AutoModelForImageClassification

from .configuration_probe import BN_EPS, HEAD_INITS, HEAD_NORMS, ProbeClassifierConfig
from .modeling_probe import ProbeClassifier
from .pooling import LATENT_KINDS, ComponentSpec, FeatureVariant, check_variants, compute_components, variant_tensor

AutoConfig.register(ProbeClassifierConfig.model_type, ProbeClassifierConfig, exist_ok=True)
AutoModelForImageClassification.register(ProbeClassifierConfig, ProbeClassifier, exist_ok=True)

__all__ = [
    "BN_EPS",
    "HEAD_INITS",
    "HEAD_NORMS",
    "LATENT_KINDS",
    "ComponentSpec",
    "FeatureVariant",
    "ProbeClassifier",
    "ProbeClassifierConfig",
    "check_variants",
    "compute_components",
    "variant_tensor",
]
