"""Representation Autoencoder (RAE): configuration and model, registered with `AutoConfig`/`AutoModel` on import."""

from transformers import AutoConfig, AutoModel

from .configuration_rae import DECODER_PRESETS, RAEConfig
from .modeling_rae import RAEDecoderOutput, RAEEncoderOutput, RAEModel, RAEOutput, RAEPreTrainedModel


def _from_diffusers(cls, source, **kwargs):
    """Build this RAE from a diffusers `AutoencoderRAE` (instance, folder or hub id); see `rae_hf.convert`."""
    from ...convert import rae_from_diffusers

    return rae_from_diffusers(source, model_class=cls, **kwargs)


def _save_diffusers(self, path, **kwargs):
    """Write this RAE as a diffusers `AutoencoderRAE` folder; see `rae_hf.convert.save_diffusers`."""
    from ...convert import save_diffusers

    return save_diffusers(self, path, **kwargs)


# Attached here, not in modeling_rae.py: that file is copied next to pushed weights and must not import rae_hf.
RAEModel.from_diffusers = classmethod(_from_diffusers)
RAEModel.save_diffusers = _save_diffusers

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
