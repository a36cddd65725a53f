"""rae_hf: HuggingFace-native training of Representation Autoencoders and vision models."""

from .models import RAEConfig, RAEModel

__version__ = "0.1.0"

__all__ = ["RAEConfig", "RAEModel", "__version__"]
