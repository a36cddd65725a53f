"""Models of rae_hf, registered with the transformers Auto classes on import (each package registers its own).

Shared pieces: `backbone` (frozen vision backbones; token layouts in `rae/backbone_layouts.py`), `presets` (the
preset rule: explicit arguments win), `checkpoint_io` (the one checkpoint reader, shared by the converters and
pretrained-weight loading). Nothing in `rae_hf.models` imports anything outside it
(`tests/foundation/test_import_layering.py`).
"""

from . import dino, dit, jit, vit  # noqa: F401  (register DINO, DiT-DH, JiT, ViT variants with the Auto classes)
from .probe import ProbeClassifier, ProbeClassifierConfig
from .rae import RAEConfig, RAEModel

__all__ = ["ProbeClassifier", "ProbeClassifierConfig", "RAEConfig", "RAEModel"]
