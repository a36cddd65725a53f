"""Configuration of the DINO/DINOv2 self-distillation model: a ViT backbone (student and teacher) and the heads.

This file is copied next to the weights by ``save_pretrained`` (``register_for_auto_class``), so it imports nothing
from ``rae_hf``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any, ClassVar

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.utils.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

IMAGENET_MEAN = tuple(IMAGENET_DEFAULT_MEAN)
IMAGENET_STD = tuple(IMAGENET_DEFAULT_STD)

# A fresh DINOv2 ViT-S/16 as in the DINOv2 training code: LayerScale 1e-5, drop path 0.3 in every block.
DEFAULT_BACKBONE = {
    "patch_size": 16,
    "hidden_size": 384,
    "num_hidden_layers": 12,
    "num_attention_heads": 6,
    "intermediate_size": 1536,
    "image_size": 224,
    "layerscale_value": 1e-5,
    "drop_path_rate": 0.3,
}

# Sizes of a fresh ViT backbone (`run_dino_pretrain.py --backbone_size`): width, depth, heads and the MLP width at
# the usual ratio 4 (`DinoConfig(backbone_preset=...)`; explicit values of `backbone_config` win).
DINO_BACKBONE_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 192, "num_hidden_layers": 12, "num_attention_heads": 3, "intermediate_size": 768},
    "small": {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6, "intermediate_size": 1536},
    "base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    "large": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096},
    "giant": {"hidden_size": 1536, "num_hidden_layers": 40, "num_attention_heads": 24, "intermediate_size": 6144},
}


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


class DinoConfig(PreTrainedConfig):
    r"""Configuration of [`DinoModel`].

    Args:
        backbone_config (`PreTrainedConfig` or `dict`):
            Config of the ViT backbone shared by student and teacher; any HF ViT-like model whose forward accepts
            `bool_masked_pos` (DINOv2, DINOv2 with registers, ViT). Default: a fresh DINOv2 ViT-S/16.
        backbone_preset (`str`, *optional*): one of `DINO_BACKBONE_SIZES` (`tiny` ... `giant`): fills the width,
            depth, heads and MLP width of a new backbone that `backbone_config` (a dict, or unset: the DINOv2
            training defaults of `DEFAULT_BACKBONE`) does not give. An unknown name is an error listing the known ones.
        head_out_dim (`int`, defaults to 65536): prototypes K of the DINO head.
        head_hidden_dim (`int`, defaults to 2048) / head_bottleneck_dim (`int`, defaults to 256) /
        head_num_layers (`int`, defaults to 3): the head MLP (Linear-GELU x (n-1), Linear to the bottleneck).
        use_ibot (`bool`, defaults to `True`): compute the iBOT masked-patch logits (DINOv2); `False` for DINO v1.
        ibot_separate_head (`bool`, defaults to `False`): a separate iBOT head (else the DINO head is shared).
        ibot_out_dim / ibot_hidden_dim / ibot_bottleneck_dim: sizes of the separate iBOT head.
        image_size (`int`, defaults to 224): global crop size (the exported image processor's crop).
        image_mean / image_std: normalization of the views (the exported image processor's).
        initializer_range (`float`, defaults to 0.02): std of the heads' truncated-normal init.
        interpolate_offset (`float`, *optional*, defaults to 0.1): DINOv2 backbones resize their position grid for
            other crop sizes (the local crops) bicubically with scale `(grid + offset) / M`, antialias off, as the
            DINOv2 code; `None` or 0: transformers' resize to the exact size.
        drop_path_mode (`str`, defaults to `"batch_subset"`): the student's stochastic depth on DINOv2 backbones:
            `"batch_subset"` (DINOv2 code: a random `int(B(1-p))` samples run each residual branch, weight
            `B/subset`) or `"per_sample"` (transformers: each sample dropped apart, weight `1/(1-p)`).
        backbone_init (`str`, defaults to `"official"`): init of a fresh DINOv2 backbone: `"official"` (CLS and
            register tokens N(0, 1e-6), PyTorch's default patch-embedding conv) or `"backbone"` (transformers').
    """

    model_type = "rae_hf_dino"
    sub_configs_defaults: ClassVar[dict[str, SubConfigSpec]] = {
        "backbone_config": SubConfigSpec(config_class=AutoConfig, model_type="dinov2", init_kwargs=DEFAULT_BACKBONE),
    }

    backbone_config: PreTrainedConfig | dict | None = None
    backbone_preset: str | None = None
    head_out_dim: int = 65536
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    head_num_layers: int = 3
    use_ibot: bool = True
    ibot_separate_head: bool = False
    ibot_out_dim: int = 65536
    ibot_hidden_dim: int = 2048
    ibot_bottleneck_dim: int = 256
    image_size: int = 224
    image_mean: list[float] | None = None
    image_std: list[float] | None = None
    initializer_range: float = 0.02
    interpolate_offset: float | None = 0.1
    drop_path_mode: str = "batch_subset"
    backbone_init: str = "official"

    def __post_init__(self, **kwargs):
        if self.backbone_preset is not None:
            self.backbone_config = self._preset_backbone()
        super().__post_init__(**kwargs)
        self.image_mean = [float(v) for v in (self.image_mean or IMAGENET_MEAN)]
        self.image_std = [float(v) for v in (self.image_std or IMAGENET_STD)]
        self._validate()

    def _preset_backbone(self) -> dict:
        """`backbone_config` as a dict, with the sizes of `backbone_preset` wherever it gives none."""
        if isinstance(self.backbone_config, PreTrainedConfig):
            raise ValueError(
                "backbone_preset sizes a new backbone: give backbone_config as a dict (its values win over the preset) "
                "or leave backbone_preset unset."
            )
        sizes = DINO_BACKBONE_SIZES.get(self.backbone_preset, {})
        given = self.backbone_config
        if given is None:  # the DINOv2 training defaults, less the ViT-S sizes the preset replaces
            given = {key: value for key, value in DEFAULT_BACKBONE.items() if key not in sizes}
        backbone = SimpleNamespace(**{"model_type": "dinov2", **given})
        apply_preset(backbone, DINO_BACKBONE_SIZES, self.backbone_preset, "backbone_preset")
        return vars(backbone)

    def _validate(self) -> None:
        for name in (
            "head_out_dim",
            "head_hidden_dim",
            "head_bottleneck_dim",
            "ibot_out_dim",
            "ibot_hidden_dim",
            "ibot_bottleneck_dim",
            "image_size",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be positive.")
        if self.drop_path_mode not in ("batch_subset", "per_sample"):
            raise ValueError(f"drop_path_mode={self.drop_path_mode!r} must be 'batch_subset' or 'per_sample'.")
        if self.backbone_init not in ("official", "backbone"):
            raise ValueError(f"backbone_init={self.backbone_init!r} must be 'official' or 'backbone'.")
        if self.interpolate_offset is not None and not 0.0 <= self.interpolate_offset < 1.0:
            raise ValueError(f"interpolate_offset={self.interpolate_offset} must be in [0, 1) or None.")
        if self.head_num_layers < 1:
            raise ValueError(f"head_num_layers={self.head_num_layers} must be >= 1.")
        if self.image_size % self.patch_size != 0:
            raise ValueError(
                f"image_size={self.image_size} must be a multiple of the backbone patch size {self.patch_size}."
            )
        for name in ("image_mean", "image_std"):
            if len(getattr(self, name)) != 3:
                raise ValueError(f"{name} needs 3 values, got {getattr(self, name)}.")
        if min(self.image_std) <= 0:
            raise ValueError(f"image_std must be positive, got {self.image_std}.")

    @property
    def patch_size(self) -> int:
        patch = self.backbone_config.patch_size
        return int(patch[0] if isinstance(patch, (list, tuple)) else patch)

    @property
    def num_prefix_tokens(self) -> int:
        """CLS plus register tokens before the patch tokens in the backbone's output."""
        return 1 + int(getattr(self.backbone_config, "num_register_tokens", 0) or 0)


__all__ = ["DEFAULT_BACKBONE", "DINO_BACKBONE_SIZES", "DinoConfig", "apply_preset"]
