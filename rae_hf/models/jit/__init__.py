"""JiT ("Just image Transformers"): pixel-space diffusion with a plain ViT; configuration and model.

Importing this package registers `JiTConfig`/`JiTModel` with the transformers Auto classes, and `save_pretrained`
copies the two model files next to the weights (`auto_map`), so a pushed JiT loads with `trust_remote_code=True`.
"""

from transformers import AutoConfig, AutoModel

from .configuration_jit import (
    JIT_PRESETS,
    JIT_SIZES,
    PREDICTION_TYPES,
    PUBLISHED_PRESETS,
    JiTConfig,
    swiglu_hidden_size,
)
from .modeling_jit import JiTModel, JiTOutput, JiTPreTrainedModel

AutoConfig.register(JiTConfig.model_type, JiTConfig, exist_ok=True)
AutoModel.register(JiTConfig, JiTModel, exist_ok=True)
JiTConfig.register_for_auto_class()
JiTModel.register_for_auto_class("AutoModel")

__all__ = [
    "JIT_PRESETS",
    "JIT_SIZES",
    "PREDICTION_TYPES",
    "PUBLISHED_PRESETS",
    "JiTConfig",
    "JiTModel",
    "JiTOutput",
    "JiTPreTrainedModel",
    "swiglu_hidden_size",
]
