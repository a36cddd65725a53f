"""Configuration of the DINO/DINOv2 self-distillation model: a ViT backbone (student and teacher) and the heads.

This file is copied next to the weights by ``save_pretrained`` (``register_for_auto_class``), so it imports nothing
from ``rae_hf``.
"""

from __future__ import annotations

from typing import ClassVar

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


class DinoConfig(PreTrainedConfig):
    r"""Configuration of [`DinoModel`].

    Args:
        backbone_config (`PreTrainedConfig` or `dict`):
            Config of the ViT backbone shared by student and teacher; any HF ViT-like model whose forward accepts
            `bool_masked_pos` (DINOv2, DINOv2 with registers, ViT). Default: a fresh DINOv2 ViT-S/16.
        head_out_dim (`int`, defaults to 65536): prototypes K of the DINO head.
        head_hidden_dim (`int`, defaults to 2048) / head_bottleneck_dim (`int`, defaults to 256) /
        head_num_layers (`int`, defaults to 3): the head MLP (Linear-GELU x (n-1), Linear to the bottleneck).
        use_ibot (`bool`, defaults to `True`): compute the iBOT masked-patch logits (DINOv2); `False` for DINO v1.
        ibot_separate_head (`bool`, defaults to `False`): a separate iBOT head (else the DINO head is shared).
        ibot_out_dim / ibot_hidden_dim / ibot_bottleneck_dim: sizes of the separate iBOT head.
        image_size (`int`, defaults to 224): global crop size (the exported image processor's crop).
        image_mean / image_std: normalization of the views (the exported image processor's).
        initializer_range (`float`, defaults to 0.02): std of the heads' truncated-normal init.
    """

    model_type = "rae_hf_dino"
    sub_configs_defaults: ClassVar[dict[str, SubConfigSpec]] = {
        "backbone_config": SubConfigSpec(config_class=AutoConfig, model_type="dinov2", init_kwargs=DEFAULT_BACKBONE),
    }

    backbone_config: PreTrainedConfig | dict | None = None
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

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.image_mean = [float(v) for v in (self.image_mean or IMAGENET_MEAN)]
        self.image_std = [float(v) for v in (self.image_std or IMAGENET_STD)]
        self._validate()

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


__all__ = ["DinoConfig"]
