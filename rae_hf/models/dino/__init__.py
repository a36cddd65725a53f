"""DINO/DINOv2 self-distillation model (student, teacher, heads), registered with the Auto classes on import."""

from transformers import AutoConfig, AutoModel

from .configuration_dino import DINO_BACKBONE_SIZES, DinoConfig
from .modeling_dino import DinoHead, DinoModel, DinoOutput, DinoPreTrainedModel

AutoConfig.register(DinoConfig.model_type, DinoConfig, exist_ok=True)
AutoModel.register(DinoConfig, DinoModel, exist_ok=True)
DinoConfig.register_for_auto_class()
DinoModel.register_for_auto_class("AutoModel")

__all__ = ["DINO_BACKBONE_SIZES", "DinoConfig", "DinoHead", "DinoModel", "DinoOutput", "DinoPreTrainedModel"]
