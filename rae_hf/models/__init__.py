"""Models of rae_hf, registered with the transformers Auto classes on import."""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from ..probe.classifier import ProbeClassifier, ProbeClassifierConfig
from .rae import RAEConfig, RAEModel

AutoConfig.register(RAEConfig.model_type, RAEConfig, exist_ok=True)
AutoModel.register(RAEConfig, RAEModel, exist_ok=True)
# save_pretrained then writes `auto_map` and copies the two model files, so the hub checkpoint loads anywhere.
RAEConfig.register_for_auto_class()
RAEModel.register_for_auto_class("AutoModel")

AutoConfig.register(ProbeClassifierConfig.model_type, ProbeClassifierConfig, exist_ok=True)
AutoModelForImageClassification.register(ProbeClassifierConfig, ProbeClassifier, exist_ok=True)

__all__ = ["ProbeClassifier", "ProbeClassifierConfig", "RAEConfig", "RAEModel"]
