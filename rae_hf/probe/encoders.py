"""Frozen vision encoders for probing: the library's backbone adapter plus what the feature cache needs.

`load_encoder` accepts any HF vision model id or local path (DINOv2 with or without registers, DINOv3, ViT, ViT-MAE,
CLIP and SigLIP vision towers; a composite CLIP/SigLIP checkpoint gives its vision tower) and `RAEModel` checkpoints
(its encoder and its preprocessing). The adapter itself (token layouts, preprocessing, blocks) is
`rae_hf.models.backbone.FrozenBackbone`; `ProbeEncoder` adds the identity (weights fingerprint, preprocessing) that
keys the feature cache.

Extension point: an architecture is supported once `AutoModel` can build it and `register_token_layout` has told
where its tokens and final norm are.
"""

from __future__ import annotations

import hashlib
import json
import os

import torch

from rae_hf.models.backbone import (
    TOKEN_LAYOUTS,
    FrozenBackbone,
    TokenLayout,
    load_backbone,
    register_token_layout,
)
from rae_hf.models.backbone import BackboneOutput as ProbeEncoderOutput

__all__ = [
    "TOKEN_LAYOUTS",
    "ProbeEncoder",
    "ProbeEncoderOutput",
    "TokenLayout",
    "load_encoder",
    "register_token_layout",
]


class ProbeEncoder(FrozenBackbone):
    """A `FrozenBackbone` that knows what its features depend on (for the feature cache key)."""

    _fingerprint: str | None = None

    def weights_fingerprint(self) -> str:
        """Hash of every parameter and persistent buffer (computed once: the probe encoder is frozen)."""
        if self._fingerprint is None:
            digest = hashlib.blake2b(digest_size=16)
            for name, tensor in sorted(self.state_dict().items()):
                tensor = tensor.detach().cpu().contiguous()
                digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
                digest.update(tensor.flatten().view(torch.uint8).numpy().tobytes())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def identity(self) -> dict:
        """What the encoder's features depend on: architecture, weights, preprocessing (JSON-serializable)."""
        config = self.config.to_dict()
        for key in ("_name_or_path", "transformers_version", "architectures", "torch_dtype", "dtype"):
            config.pop(key, None)
        return {
            "model_type": self.model_type,
            "config_digest": hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16],
            "weights_fingerprint": self.weights_fingerprint(),
            "image_size": self.image_size,
            "image_mean": [round(v, 6) for v in self.image_mean.flatten().tolist()],
            "image_std": [round(v, 6) for v in self.image_std.flatten().tolist()],
            "latent_norm_eps": self.latent_norm_eps,
        }


def load_encoder(
    name_or_path: str | os.PathLike, image_size: int | None = None, **from_pretrained_kwargs
) -> ProbeEncoder:
    """Load a frozen, eval-mode `ProbeEncoder` from a hub id or a local folder (see `load_backbone`).

    Args:
        name_or_path: any supported HF vision checkpoint (composite CLIP/SigLIP: the vision tower), or an RAE.
        image_size: encoder input size; default from the image-processor config (crop size), else the config's.
            An RAE's input size is fixed by its latent statistics and decoder: only its own value is accepted.
        from_pretrained_kwargs: passed to `from_pretrained` (`revision`, `cache_dir`, `token`, ...).
    """
    return load_backbone(
        name_or_path, image_size, ProbeEncoder, argument="model_name_or_path", **from_pretrained_kwargs
    )
