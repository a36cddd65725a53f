"""Models of rae_hf, registered with the transformers Auto classes on import (each package registers its own).

Shared pieces: `backbone` (frozen vision backbones; token layouts in `rae/backbone_layouts.py`), `presets` (the
preset rule: explicit arguments win). A model folder imports nothing outside `rae_hf.models`.
"""

from . import dino, jit, vit  # noqa: F401  (register DINO, JiT and the ViT variants with the Auto classes)
from .probe import ProbeClassifier, ProbeClassifierConfig
from .rae import RAEConfig, RAEModel

__all__ = ["ProbeClassifier", "ProbeClassifierConfig", "RAEConfig", "RAEModel"]
