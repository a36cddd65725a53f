"""Representation Autoencoder (RAE): configuration and model."""

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

__all__ = [
    "DECODER_PRESETS",
    "RAEConfig",
    "RAEDecoderOutput",
    "RAEEncoderOutput",
    "RAEModel",
    "RAEOutput",
    "RAEPreTrainedModel",
]
