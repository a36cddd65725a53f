"""rae_hf: HuggingFace-native training of Representation Autoencoders and vision models."""

from .models import RAEConfig, RAEModel

__version__ = "0.1.0"

_LAZY = {
    "DiTDHConfig": "rae_hf.models.dit",
    "DiTDHModel": "rae_hf.models.dit",
    "JiTConfig": "rae_hf.models.jit",
    "JiTModel": "rae_hf.models.jit",
    "JiTPipeline": "rae_hf.pipelines",
    "RAEDiTPipeline": "rae_hf.pipelines",
}


def __getattr__(name: str):
    """Heavy exports (diffusers pipelines) are imported on first use."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rae_hf' has no attribute {name!r}")


__all__ = [
    "DiTDHConfig",
    "DiTDHModel",
    "JiTConfig",
    "JiTModel",
    "JiTPipeline",
    "RAEConfig",
    "RAEDiTPipeline",
    "RAEModel",
    "__version__",
]
