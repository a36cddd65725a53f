"""DiT-DH (`DiTwDDTHead` of the RAE paper): the stage-2 velocity network over normalized RAE latents.

Importing this package registers `DiTDHConfig`/`DiTDHModel` with the transformers Auto classes, and `save_pretrained`
copies the two model files next to the weights (`auto_map`), so a saved DiT-DH loads with `trust_remote_code=True`.
"""

from transformers import AutoConfig, AutoModel

from .configuration_dit import DEFAULT_PRESET, DITDH_PRESETS, DiTDHConfig, swiglu_intermediate_size
from .modeling_dit import DiTDHModel, DiTDHOutput, DiTDHPreTrainedModel

AutoConfig.register(DiTDHConfig.model_type, DiTDHConfig, exist_ok=True)
AutoModel.register(DiTDHConfig, DiTDHModel, exist_ok=True)
DiTDHConfig.register_for_auto_class()
DiTDHModel.register_for_auto_class("AutoModel")

__all__ = [
    "DEFAULT_PRESET",
    "DITDH_PRESETS",
    "DiTDHConfig",
    "DiTDHModel",
    "DiTDHOutput",
    "DiTDHPreTrainedModel",
    "swiglu_intermediate_size",
]
