"""The generic frozen vision backbone: any supported HF vision model (or an RAE's encoder) behind one interface.

`FrozenBackbone` maps [0, 1] images to normalized token sequences and knows the CLS/register/patch token layout, the
image size, mean and std of its checkpoint; `load_backbone` builds one from a hub id or local folder. The token
layouts themselves (`TOKEN_LAYOUTS`, `register_token_layout`) live in `rae_hf/models/rae/backbone_layouts.py`, the
one table the RAE's remote code and everything else share.

Users: probing (`rae_hf.probe`), the probe classifier (`rae_hf.models.probe`); the RAE runs the same table inside
`RAEModel`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from .rae import RAEModel
from .rae.backbone_layouts import (
    TOKEN_LAYOUTS,
    TokenLayout,
    apply_config_overrides,
    as_int,
    image_processor_settings,
    interpolation_kwargs,
    load_vision_config,
    mae_identity_noise,
    register_token_layout,
    token_layout,
)

__all__ = [
    "TOKEN_LAYOUTS",
    "BackboneOutput",
    "FrozenBackbone",
    "TokenLayout",
    "load_backbone",
    "register_token_layout",
    "token_layout",
]

logger = logging.getLogger(__name__)


@dataclass
class BackboneOutput(ModelOutput):
    """blocks: normalized token sequences `[B, L, C]` of the last blocks, earliest first (the last one is the
    encoder output); pooled_output: `[B, C]` pooled output standing in for a missing CLS token, or None."""

    blocks: tuple[torch.Tensor, ...] | None = None
    pooled_output: torch.Tensor | None = None


class FrozenBackbone(nn.Module):
    """A vision backbone with its preprocessing and token layout. Takes [0, 1] images of any size.

    Args:
        backbone: the HF vision model (`AutoModel` of a vision config).
        image_size: input side; images are resized to it (bicubic), then normalized with `image_mean`/`image_std`.
        latent_norm_eps: set for RAE encoders with latent statistics: the `latents_mean`/`latents_var` buffers
            `[C, h, w]` standardize the patch-token map in `latents`, as `RAEModel.encode` does.
        name_or_path: where it came from (reports only).
    """

    def __init__(
        self,
        backbone: PreTrainedModel,
        image_size: int,
        image_mean: tuple[float, ...] | list[float],
        image_std: tuple[float, ...] | list[float],
        latent_norm_eps: float | None = None,
        name_or_path: str | None = None,
    ):
        super().__init__()
        self.layout = token_layout(backbone.config.model_type)
        for name in self.layout.unused_modules:
            setattr(backbone, name, None)
        self.backbone = backbone
        self.image_size = int(image_size)
        self.name_or_path = name_or_path
        self.latent_norm_eps = latent_norm_eps
        if self.image_size % self.patch_size != 0:
            raise ValueError(f"image_size={image_size} must be a multiple of the patch size {self.patch_size}.")
        mean, std = (torch.tensor(values, dtype=torch.float32).view(-1, 1, 1) for values in (image_mean, image_std))
        self.register_buffer("image_mean", mean, persistent=False)
        self.register_buffer("image_std", std, persistent=False)
        if latent_norm_eps is not None:
            shape = (self.hidden_size, self.grid_size, self.grid_size)
            self.register_buffer("latents_mean", torch.zeros(shape))
            self.register_buffer("latents_var", torch.ones(shape))
        self._forward_kwargs = interpolation_kwargs(backbone, self.image_size)

    # ----- layout -------------------------------------------------------------------------------------------------
    @property
    def config(self) -> PreTrainedConfig:
        return self.backbone.config

    @property
    def model_type(self) -> str:
        return self.config.model_type

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @property
    def num_blocks(self) -> int:
        return int(self.config.num_hidden_layers)

    @property
    def patch_size(self) -> int:
        return as_int(self.config.patch_size)

    @property
    def native_image_size(self) -> int:
        return as_int(getattr(self.config, "image_size", self.image_size))

    @property
    def grid_size(self) -> int:
        """Patch tokens per side at `image_size`."""
        return self.image_size // self.patch_size

    @property
    def num_register_tokens(self) -> int:
        return int(getattr(self.config, "num_register_tokens", 0) or 0)

    @property
    def num_prefix_tokens(self) -> int:
        """CLS plus register tokens, in front of the patch tokens."""
        return int(self.layout.has_cls_token) + self.num_register_tokens

    @property
    def has_cls_feature(self) -> bool:
        """Whether a `cls` feature exists (a CLS token, or a pooled output standing in for it)."""
        return self.layout.has_cls_token or self._has_pooling_head()

    def _has_pooling_head(self) -> bool:
        head = self.layout.pooling_head
        return head is not None and getattr(self.backbone, head, None) is not None

    # ----- forward ------------------------------------------------------------------------------------------------
    def preprocess(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[0, 1] images -> bicubic resize to `image_size` -> mean/std normalization."""
        size = self.image_size
        if pixel_values.shape[-2:] != (size, size):
            pixel_values = F.interpolate(pixel_values, size=(size, size), mode="bicubic", align_corners=False)
        return (pixel_values - self.image_mean) / self.image_std

    def forward(self, pixel_values: torch.Tensor, num_blocks: int = 1) -> BackboneOutput:
        """Normalized tokens of the last `num_blocks` blocks for [0, 1] images `[B, 3, H, W]`."""
        if not 1 <= num_blocks <= self.num_blocks:
            raise ValueError(f"num_blocks={num_blocks} must be in [1, {self.num_blocks}] for this encoder.")
        inputs = self.preprocess(pixel_values)
        kwargs = dict(self._forward_kwargs)
        if self.model_type == "vit_mae":  # identity order: every patch in place
            kwargs["noise"] = mae_identity_noise(inputs, self.patch_size)
        outputs = self.backbone(pixel_values=inputs, output_hidden_states=num_blocks > 1, **kwargs)
        norm = getattr(self.backbone, self.layout.final_norm)
        last = outputs.last_hidden_state
        if not self.layout.normed_last_hidden_state:
            last = norm(last)
        earlier = tuple(norm(hidden) for hidden in outputs.hidden_states[-num_blocks:-1]) if num_blocks > 1 else ()
        pooled = outputs.pooler_output if self._has_pooling_head() else None
        return BackboneOutput(blocks=(*earlier, last), pooled_output=pooled)

    def cls_token(self, tokens: torch.Tensor, pooled_output: torch.Tensor | None = None) -> torch.Tensor:
        """`[B, C]` CLS token of a block (or the pooled output for encoders without one)."""
        if self.layout.has_cls_token:
            return tokens[:, 0]
        if pooled_output is None:
            raise ValueError(f"{self.model_type} has no CLS token and no pooling head: use mean pooling.")
        return pooled_output

    def patch_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """`[B, h*w, C]` patch tokens of a block (CLS and registers dropped)."""
        return tokens[:, self.num_prefix_tokens :]

    def latents(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        """Patch tokens as a `[B, C, h, w]` map, standardized with the RAE's statistics when it has them."""
        grid = round(patch_tokens.shape[1] ** 0.5)
        latents = patch_tokens.transpose(1, 2).reshape(patch_tokens.shape[0], -1, grid, grid)
        if self.latent_norm_eps is not None:
            latents = (latents - self.latents_mean) / torch.sqrt(self.latents_var + self.latent_norm_eps)
        return latents


def load_backbone(
    name_or_path: str | os.PathLike,
    image_size: int | None = None,
    backbone_class: type[FrozenBackbone] = FrozenBackbone,
    argument: str = "model_name_or_path",
    **from_pretrained_kwargs,
) -> FrozenBackbone:
    """Load a frozen, eval-mode backbone from a hub id or a local folder.

    Args:
        name_or_path: any supported HF vision checkpoint (composite CLIP/SigLIP: the vision tower), or an RAE.
        image_size: input size; default from the image-processor config (crop size), else the config's.
            An RAE's input size is fixed by its latent statistics and decoder: only its own value is accepted.
        backbone_class: `FrozenBackbone` or a subclass (e.g. the probe's encoder) to build.
        argument: the user-facing name of `name_or_path`, for error messages (a missing folder, a text model).
        from_pretrained_kwargs: passed to `from_pretrained` (`revision`, `cache_dir`, `token`, ...).
    """
    name = os.fspath(name_or_path)
    vision_config = load_vision_config(name, argument, accept=("rae",), **from_pretrained_kwargs)
    if vision_config.model_type == "rae":
        rae = RAEModel.from_pretrained(name, **from_pretrained_kwargs)
        encoder = _backbone_from_rae(rae, image_size, backbone_class)
    else:
        if vision_config.model_type not in TOKEN_LAYOUTS:
            raise ValueError(
                f"{argument}={name!r} is a {vision_config.model_type!r} model, which is not a supported vision "
                f"backbone; supported: {sorted(TOKEN_LAYOUTS)} and RAE checkpoints (add one with "
                "rae_hf.models.backbone.register_token_layout)."
            )
        layout = TOKEN_LAYOUTS[vision_config.model_type]
        apply_config_overrides(vision_config)
        model_class = AutoModel._model_mapping[type(vision_config)]
        backbone, info = model_class.from_pretrained(
            name, config=vision_config, output_loading_info=True, **from_pretrained_kwargs
        )
        unused = tuple(f"{module}." for module in layout.unused_modules)
        missing = sorted(key for key in info["missing_keys"] if not key.startswith(unused))
        if missing:
            raise ValueError(f"Weights of {name} lack {missing}.")
        size, mean, std = image_processor_settings(name, layout, **from_pretrained_kwargs)
        size = image_size or size or as_int(vision_config.image_size)
        encoder = backbone_class(backbone, size, mean, std)
    encoder.name_or_path = name
    encoder.requires_grad_(False).eval()
    logger.info(
        "Encoder %s: %s, input %d px, %d prefix tokens (%d registers), %d blocks of width %d.",
        name,
        encoder.model_type,
        encoder.image_size,
        encoder.num_prefix_tokens,
        encoder.num_register_tokens,
        encoder.num_blocks,
        encoder.hidden_size,
    )
    return encoder


def _backbone_from_rae(rae: RAEModel, image_size: int | None, backbone_class: type[FrozenBackbone]) -> FrozenBackbone:
    """The RAE's encoder with its preprocessing and latent statistics (the decoder is left out)."""
    config = rae.config
    if image_size is not None and image_size != config.encoder_input_size:
        raise ValueError(
            f"image_size={image_size}, but this RAE's encoder takes {config.encoder_input_size} px (fixed by its "
            "latent statistics and decoder); leave --image_size unset."
        )
    backbone = rae.encoder
    _make_final_norm_affine(backbone, token_layout(backbone.config.model_type).final_norm)
    eps = config.latent_norm_eps if config.normalize_latents else None
    encoder = backbone_class(
        backbone, config.encoder_input_size, config.encoder_image_mean, config.encoder_image_std, latent_norm_eps=eps
    )
    if eps is not None:
        encoder.latents_mean.copy_(rae.latents_mean)
        encoder.latents_var.copy_(rae.latents_var)
    return encoder


def _make_final_norm_affine(backbone: nn.Module, attribute: str) -> None:
    """Replace the RAE's scale-free final LayerNorm by the same function with unit weight and zero bias, so the
    backbone is a standard HF model again (its state dict loads into `AutoModel.from_config(config)`)."""
    old = getattr(backbone, attribute)
    if isinstance(old, nn.LayerNorm) and not old.elementwise_affine:
        setattr(backbone, attribute, nn.LayerNorm(old.normalized_shape, eps=old.eps))
