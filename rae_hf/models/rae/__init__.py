"""Representation Autoencoder (RAE): configuration and model, registered with `AutoConfig`/`AutoModel` on import.

Conversion to and from diffusers' `AutoencoderRAE` lives above the models: `rae_hf.convert.rae_from_diffusers` and
`rae_hf.convert.save_diffusers`.
"""

from transformers import AutoConfig, AutoModel

from .configuration_rae import DECODER_PRESETS, RAEConfig
from .modeling_rae import RAEDecoderOutput, RAEEncoderOutput, RAEModel, RAEOutput, RAEPreTrainedModel

AutoConfig.register(RAEConfig.model_type, RAEConfig, exist_ok=True)
AutoModel.register(RAEConfig, RAEModel, exist_ok=True)
# save_pretrained then writes `auto_map` and copies the model files, so the hub checkpoint loads anywhere.
RAEConfig.register_for_auto_class()
RAEModel.register_for_auto_class("AutoModel")

__all__ = [
    "DECODER_PRESETS",
    "RAEConfig",
    "RAEDecoderOutput",
    "RAEEncoderOutput",
    "RAEModel",
    "RAEOutput",
    "RAEPreTrainedModel",
]
