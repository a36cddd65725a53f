"""ViT variants (the seed's CIFAR / ImageNet zoo): config, models, presets and pretrained-weight loading."""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification, ViTImageProcessor

from ..rae.backbone_layouts import TokenLayout, register_token_layout
from .configuration_vit_variant import IMAGENET_MEAN, IMAGENET_STD, VIT_PRESETS, ViTVariantConfig
from .modeling_vit_variant import ViTVariantForImageClassification, ViTVariantModel, ViTVariantPreTrainedModel
from .pretrained import PRETRAINED_SOURCES, default_source, load_pretrained_weights

AutoConfig.register(ViTVariantConfig.model_type, ViTVariantConfig, exist_ok=True)
AutoModel.register(ViTVariantConfig, ViTVariantModel, exist_ok=True)
AutoModelForImageClassification.register(ViTVariantConfig, ViTVariantForImageClassification, exist_ok=True)
# save_pretrained writes `auto_map` and copies the two model files, so a pushed checkpoint loads without rae_hf.
ViTVariantConfig.register_for_auto_class()
ViTVariantModel.register_for_auto_class("AutoModel")
ViTVariantForImageClassification.register_for_auto_class("AutoModelForImageClassification")
# Frozen-backbone use (probing, RAE encoders): cls token first, tokens of `last_hidden_state` already normed by `norm`.
register_token_layout(ViTVariantConfig.model_type, TokenLayout("norm"))


def build_vit(
    preset: str | None = None, pretrained: bool = False, pretrained_source: str | None = None, **config_kwargs
) -> ViTVariantForImageClassification:
    """A classification ViT from a preset (explicit config arguments win); with `pretrained`, ImageNet weights
    from `pretrained_source` (default: the preset's timm checkpoint), embeddings resized to the model."""
    model = ViTVariantForImageClassification(ViTVariantConfig(preset=preset, **config_kwargs))
    if pretrained or pretrained_source:
        load_pretrained_weights(model, pretrained_source or default_source(preset))
    return model


def image_processor(config: ViTVariantConfig) -> ViTImageProcessor:
    """The image processor matching `config` (bicubic resize to `image_size`, `image_mean`/`image_std`): saved next
    to the weights so pipelines and `run_probe.py` preprocess as training did."""
    size = config.image_size
    return ViTImageProcessor(
        size={"height": size, "width": size}, resample=3, image_mean=config.image_mean, image_std=config.image_std
    )


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PRETRAINED_SOURCES",
    "VIT_PRESETS",
    "ViTVariantConfig",
    "ViTVariantForImageClassification",
    "ViTVariantModel",
    "ViTVariantPreTrainedModel",
    "build_vit",
    "default_source",
    "image_processor",
    "load_pretrained_weights",
]
