"""Representation Autoencoder (RAE): configuration and model."""

from .configuration_rae import DECODER_PRESETS, RAEConfig
from .modeling_rae import RAEDecoderOutput, RAEEncoderOutput, RAEModel, RAEOutput, RAEPreTrainedModel

__all__ = [
    "DECODER_PRESETS",
    "RAEConfig",
    "RAEDecoderOutput",
    "RAEEncoderOutput",
    "RAEModel",
    "RAEOutput",
    "RAEPreTrainedModel",
]
