"""Frozen vision backbones: where each architecture keeps its tokens and final norm, and how to run it unchanged.

One table for every user of a pretrained encoder (the RAE here, probing and the rest of the library through
`rae_hf.models.backbone`). It lives in the RAE folder because `modeling_rae.py` needs it and remote code copies only
files of the model's own folder: this file imports nothing from `rae_hf`.

Supported `model_type`s: DINOv2 (with/without registers), DINOv3 ViT, ViT, ViT-MAE, CLIP and SigLIP vision towers.
An architecture joins with `register_token_layout` once `AutoModel` can build it.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoImageProcessor, PreTrainedConfig
from transformers.utils.constants import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    IMAGENET_STANDARD_MEAN,
    IMAGENET_STANDARD_STD,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
)

__all__ = [
    "TOKEN_LAYOUTS",
    "TokenLayout",
    "apply_config_overrides",
    "as_int",
    "final_norm_without_affine",
    "image_processor_settings",
    "interpolation_kwargs",
    "load_vision_config",
    "mae_identity_noise",
    "register_token_layout",
    "token_layout",
]


@dataclass(frozen=True)
class TokenLayout:
    """Where an architecture keeps its tokens.

    Attributes:
        final_norm: attribute of the backbone's final norm (RAE: kept without scale/shift; probing: applied to
            every returned block, as DINOv2's `get_intermediate_layers(norm=True)` does).
        has_cls_token: the sequence starts with a CLS token; `config.num_register_tokens` registers follow it.
        normed_last_hidden_state: whether `last_hidden_state` already went through `final_norm` (CLIP's does not).
        pooling_head: attribute of a pooling head whose `pooler_output` stands in for a missing CLS token (SigLIP's
            attention-pooling `head`); None when the backbone has a CLS token or no such head.
        image_mean / image_std: normalization used when the checkpoint ships no image-processor config.
        unused_modules: backbone attributes a probe never uses (set to None, so checkpoints without them load).
        config_overrides: config values every frozen use needs (ViT-MAE keeps every patch: `mask_ratio` 0).
        headless_overrides: config values that drop the pooling head (the RAE uses patch tokens only).
    """

    final_norm: str
    has_cls_token: bool = True
    normed_last_hidden_state: bool = True
    pooling_head: str | None = None
    image_mean: tuple[float, ...] = tuple(IMAGENET_DEFAULT_MEAN)
    image_std: tuple[float, ...] = tuple(IMAGENET_DEFAULT_STD)
    unused_modules: tuple[str, ...] = ()
    config_overrides: dict[str, Any] = field(default_factory=dict)
    headless_overrides: dict[str, Any] = field(default_factory=dict)


_SIGLIP = TokenLayout(
    "post_layernorm",
    has_cls_token=False,
    pooling_head="head",
    image_mean=tuple(IMAGENET_STANDARD_MEAN),
    image_std=tuple(IMAGENET_STANDARD_STD),
    headless_overrides={"vision_use_head": False},
)
TOKEN_LAYOUTS: dict[str, TokenLayout] = {
    "dinov2": TokenLayout("layernorm"),
    "dinov2_with_registers": TokenLayout("layernorm"),
    "dinov3_vit": TokenLayout("norm"),
    "vit": TokenLayout("layernorm", unused_modules=("pooler",)),  # the tanh pooler of supervised ViTs
    "vit_mae": TokenLayout("layernorm", config_overrides={"mask_ratio": 0.0}),
    "clip_vision_model": TokenLayout(
        "post_layernorm",
        normed_last_hidden_state=False,
        image_mean=tuple(OPENAI_CLIP_MEAN),
        image_std=tuple(OPENAI_CLIP_STD),
    ),
    "siglip_vision_model": _SIGLIP,
}


def register_token_layout(model_type: str, layout: TokenLayout) -> None:
    """Make another `AutoModel` vision architecture (`model_type` as in its config) usable as a frozen backbone."""
    TOKEN_LAYOUTS[model_type] = layout


def token_layout(model_type: str) -> TokenLayout:
    """The layout of `model_type`, or an error listing the supported ones."""
    if model_type not in TOKEN_LAYOUTS:
        raise ValueError(
            f"Encoders of type {model_type!r} are not supported; supported: {sorted(TOKEN_LAYOUTS)} (and RAE "
            "checkpoints for probing). Add one with rae_hf.models.backbone.register_token_layout."
        )
    return TOKEN_LAYOUTS[model_type]


def as_int(value: int | list | tuple) -> int:
    """A config size (`patch_size`, `image_size`) that may be given as `[h, w]`: its first entry."""
    return int(value[0] if isinstance(value, (list, tuple)) else value)


def _is_hub_id(name: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def load_vision_config(
    name_or_path: str | os.PathLike, argument: str, accept: tuple[str, ...] = (), **kwargs
) -> PreTrainedConfig:
    """The vision config of a local folder or hub id (a composite CLIP/SigLIP checkpoint gives its vision tower).

    Errors name `argument` and the path: a folder that does not exist, a checkpoint without `config.json`, or a
    model that is not a vision encoder (e.g. BERT or GPT-2: no `patch_size`). Configs of a `model_type` in
    `accept` are returned as they are (e.g. `"rae"`, whose encoder is inside).
    """
    name = os.fspath(name_or_path)
    if not os.path.exists(name) and not _is_hub_id(name):
        raise FileNotFoundError(
            f"{argument}={name!r}: there is no local folder {os.path.abspath(name)!r}, and the name is not a hub "
            "model id ('namespace/name')."
        )
    if os.path.isdir(name) and not os.path.isfile(os.path.join(name, kwargs.get("subfolder") or "", "config.json")):
        raise FileNotFoundError(
            f"{argument}={name!r}: the folder has no config.json (expected a `save_pretrained` model folder)."
        )
    try:
        config = AutoConfig.from_pretrained(name, **kwargs)
    except OSError as error:
        where = "local folder" if os.path.exists(name) else "hub model id (and no local folder of that name)"
        raise OSError(f"{argument}={name!r}: cannot read the model config of this {where}: {error}") from error
    if config.model_type in accept:
        return config
    config = getattr(config, "vision_config", None) or config
    if getattr(config, "patch_size", None) is None or getattr(config, "hidden_size", None) is None:
        raise ValueError(
            f"{argument}={name!r} is a {config.model_type!r} model, not a vision encoder with patch tokens (its "
            f"config has no patch_size/hidden_size); use a vision backbone such as one of {sorted(TOKEN_LAYOUTS)}."
        )
    return config


def apply_config_overrides(config: PreTrainedConfig, drop_pooling_head: bool = False) -> PreTrainedConfig:
    """Set the config values a frozen use needs (in place): MAE without masking; optionally no pooling head."""
    layout = TOKEN_LAYOUTS.get(config.model_type)
    if layout is not None:
        overrides = {**layout.config_overrides, **(layout.headless_overrides if drop_pooling_head else {})}
        for key, value in overrides.items():
            setattr(config, key, value)
    return config


def final_norm_without_affine(backbone: nn.Module) -> None:
    """Replace the backbone's final LayerNorm by one without scale/shift (the RAE's encoder output), in place."""
    layout = TOKEN_LAYOUTS.get(backbone.config.model_type)
    old = getattr(backbone, layout.final_norm, None) if layout is not None else None
    if isinstance(old, nn.LayerNorm) and old.elementwise_affine:
        setattr(backbone, layout.final_norm, nn.LayerNorm(old.normalized_shape, eps=old.eps, elementwise_affine=False))


def interpolation_kwargs(backbone: nn.Module, input_size: int) -> dict[str, bool]:
    """`{"interpolate_pos_encoding": True}` when the backbone runs off its native image size and supports it."""
    parameters = inspect.signature(backbone.forward).parameters
    native = as_int(getattr(backbone.config, "image_size", input_size))
    return (
        {"interpolate_pos_encoding": True} if "interpolate_pos_encoding" in parameters and native != input_size else {}
    )


def mae_identity_noise(pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """ViT-MAE's shuffling "noise" that keeps every patch in place (argsort of an increasing sequence)."""
    num_patches = (pixel_values.shape[-2] // patch_size) * (pixel_values.shape[-1] // patch_size)
    return torch.arange(num_patches, device=pixel_values.device, dtype=torch.float32).expand(pixel_values.shape[0], -1)


def image_processor_settings(
    name_or_path: str | os.PathLike, layout: TokenLayout | None = None, **kwargs
) -> tuple[int | None, tuple[float, ...], tuple[float, ...]]:
    """(crop size or None, mean, std) of the checkpoint's image-processor config; the layout's (else ImageNet)
    values when it has none."""
    default = layout or TokenLayout("")
    try:
        processor = AutoImageProcessor.from_pretrained(os.fspath(name_or_path), **kwargs)
    except (OSError, ValueError, KeyError):
        return None, tuple(default.image_mean), tuple(default.image_std)
    crop = getattr(processor, "crop_size", None) or getattr(processor, "size", None) or {}
    size = crop.get("height") or crop.get("shortest_edge")
    return size, tuple(processor.image_mean), tuple(processor.image_std)
