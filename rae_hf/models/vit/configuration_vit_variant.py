"""Configuration of the ViT variants (the seed's CIFAR / ImageNet model zoo) with per-layer head and MLP widths.

This file is copied next to the weights by ``save_pretrained`` (``register_for_auto_class``), so it imports nothing
from ``rae_hf``: a pushed checkpoint loads with ``trust_remote_code=True`` where this package is not installed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import PreTrainedConfig
from transformers.utils.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

IMAGENET_MEAN = tuple(IMAGENET_DEFAULT_MEAN)
IMAGENET_STD = tuple(IMAGENET_DEFAULT_STD)

# The seed's six presets (models/vit.py, models/vit_imagenet.py); timm-style: head_dim 64, qkv bias, pre-norm.
VIT_PRESETS: dict[str, dict] = {
    "vit_tiny": dict(image_size=32, patch_size=4, hidden_size=192, num_hidden_layers=9, num_attention_heads=3,
                     intermediate_size=384, num_labels=10),
    "vit_small": dict(image_size=32, patch_size=4, hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                      intermediate_size=1536, num_labels=10),
    "vit_base": dict(image_size=32, patch_size=4, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                     intermediate_size=3072, num_labels=10),
    "vit_small_imagenet": dict(image_size=224, patch_size=16, hidden_size=384, num_hidden_layers=12,
                               num_attention_heads=6, intermediate_size=1536, num_labels=1000),
    "vit_base_imagenet": dict(image_size=224, patch_size=16, hidden_size=768, num_hidden_layers=12,
                              num_attention_heads=12, intermediate_size=3072, num_labels=1000),
    "vit_large_imagenet": dict(image_size=224, patch_size=16, hidden_size=1024, num_hidden_layers=24,
                               num_attention_heads=16, intermediate_size=4096, num_labels=1000),
}  # fmt: skip
# Sizes of a config given neither a preset nor sizes: ViT-B/16 at 224, as transformers' `ViTConfig()` (the sizes of
# `vit_base_imagenet`; the number of labels stays transformers' default unless given).
DEFAULT_SIZES = {key: value for key, value in VIT_PRESETS["vit_base_imagenet"].items() if key != "num_labels"}


# Copied from rae_hf.models.presets.apply_preset
def apply_preset(
    config: Any,
    presets: Mapping[str, Mapping[str, Any]],
    preset: str | None,
    argument: str,
    prefix: str = "",
    defaults: Mapping[str, Any] | None = None,
) -> None:
    """Fill `config.<prefix><field>` from `presets[preset]` (then from `defaults`) wherever it is still `None`.

    Fields a preset sets default to `None` in the config, so "not given" is visible; an explicit value is never
    replaced. An unknown `preset` raises a `ValueError` naming `argument` and listing the known names.
    """
    if preset is not None and preset not in presets:
        raise ValueError(
            f"{argument}={preset!r} is unknown; choose one of {sorted(presets)} or set the fields yourself."
        )
    values = {**(defaults or {}), **(presets[preset] if preset is not None else {})}
    for field, value in values.items():
        if getattr(config, prefix + field, None) is None:
            setattr(config, prefix + field, value)


class ViTVariantConfig(PreTrainedConfig):
    r"""Configuration of [`ViTVariantModel`] / [`ViTVariantForImageClassification`] (timm `VisionTransformer` shape).

    Args:
        preset (`str`, *optional*): one of `VIT_PRESETS`: fills the sizes and the number of labels that are not given
            (explicit arguments win; an unknown name is an error). With neither a preset nor sizes: ViT-B/16 at 224
            (`DEFAULT_SIZES`, as transformers' `ViTConfig()`).
        image_size / patch_size / num_channels (`int`): input side, patch side, input channels.
        hidden_size (`int`): token width D.
        num_hidden_layers (`int`): number of blocks.
        num_attention_heads (`int` or `list[int]`): heads per block (a list gives each block its own count, e.g. a
            shrunk model); 0 removes a block's attention branch.
        head_dim (`int`, *optional*): width of one head; defaults to `hidden_size // num_attention_heads`.
        intermediate_size (`int` or `list[int]`): MLP hidden width, per block when a list (0: only the output bias).
        qkv_bias (`bool`): bias in the fused qkv projection.
        hidden_act (`str`): MLP activation.
        layer_norm_eps (`float`): LayerNorm epsilon (1e-6 as timm; transformers' ViT uses 1e-12).
        hidden_dropout_prob / attention_probs_dropout_prob (`float`): dropout after projections / on attention.
        drop_path_rate (`float`): stochastic depth, rising linearly over the blocks to this value.
        use_mask_token (`bool`): add a learned mask token for `bool_masked_pos` (iBOT/DINOv2-style backbones).
        initializer_range (`float`): std of the truncated normal initialization.
        image_mean / image_std (`list[float]`): normalization the data pipeline applies before the model.
    """

    model_type = "vit_variant"

    def __init__(
        self,
        preset: str | None = None,
        image_size: int | None = None,
        patch_size: int | None = None,
        num_channels: int = 3,
        hidden_size: int | None = None,
        num_hidden_layers: int | None = None,
        num_attention_heads: int | list[int] | None = None,
        head_dim: int | None = None,
        intermediate_size: int | list[int] | None = None,
        qkv_bias: bool = True,
        hidden_act: str = "gelu",
        layer_norm_eps: float = 1e-6,
        hidden_dropout_prob: float = 0.0,
        attention_probs_dropout_prob: float = 0.0,
        drop_path_rate: float = 0.0,
        use_mask_token: bool = False,
        initializer_range: float = 0.02,
        image_mean: list[float] | tuple[float, ...] = IMAGENET_MEAN,
        image_std: list[float] | tuple[float, ...] = IMAGENET_STD,
        **kwargs,
    ):
        self.preset = preset
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        apply_preset(self, VIT_PRESETS, preset, "preset", defaults=DEFAULT_SIZES)
        if preset is not None and "num_labels" not in kwargs and kwargs.get("id2label") is None:
            kwargs["num_labels"] = VIT_PRESETS[preset]["num_labels"]  # PreTrainedConfig takes labels from kwargs
        for name in ("num_attention_heads", "intermediate_size"):
            value = getattr(self, name)
            setattr(self, name, list(value) if isinstance(value, (list, tuple)) else value)
        if head_dim is None:
            first = (
                self.num_attention_heads if isinstance(self.num_attention_heads, int) else max(self.num_attention_heads)
            )
            head_dim = self.hidden_size // max(first, 1)
        self.head_dim = head_dim
        self.qkv_bias = qkv_bias
        self.hidden_act = hidden_act
        self.layer_norm_eps = layer_norm_eps
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.drop_path_rate = drop_path_rate
        self.use_mask_token = use_mask_token
        self.initializer_range = initializer_range
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        super().__init__(**kwargs)
        self._validate()

    def _validate(self) -> None:
        """Reject values the model cannot be built with, naming the argument."""
        for name in ("image_size", "patch_size", "num_channels", "hidden_size", "num_hidden_layers", "head_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size ({self.image_size}) must be divisible by patch_size ({self.patch_size}).")
        for name in ("num_attention_heads", "intermediate_size"):
            value = getattr(self, name)
            values = value if isinstance(value, list) else [value]
            if isinstance(value, list) and len(value) != self.num_hidden_layers:
                raise ValueError(f"{name} has {len(value)} entries; num_hidden_layers is {self.num_hidden_layers}.")
            if any(not isinstance(v, int) or v < 0 for v in values):
                raise ValueError(f"{name} must hold non-negative integers, got {value!r}.")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}.")
        if len(self.image_mean) != self.num_channels or len(self.image_std) != self.num_channels:
            raise ValueError(f"image_mean and image_std need {self.num_channels} values (num_channels).")

    def layer_heads(self, index: int) -> int:
        """Number of attention heads of block `index`."""
        heads = self.num_attention_heads
        return heads[index] if isinstance(heads, list) else heads

    def layer_intermediate_size(self, index: int) -> int:
        """MLP hidden width of block `index`."""
        sizes = self.intermediate_size
        return sizes[index] if isinstance(sizes, list) else sizes

    @property
    def num_patches(self) -> int:
        """Patch tokens per image at `image_size`."""
        return (self.image_size // self.patch_size) ** 2


__all__ = ["DEFAULT_SIZES", "IMAGENET_MEAN", "IMAGENET_STD", "VIT_PRESETS", "ViTVariantConfig", "apply_preset"]
