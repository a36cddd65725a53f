"""Configuration of the probe classifier: a frozen (or fine-tuned) vision backbone, a feature variant and a
linear head (optionally after a BatchNorm without affine, as MAE's linear probe)."""

from __future__ import annotations

from typing import ClassVar

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.utils.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from .pooling import FeatureVariant

__all__ = ["BN_EPS", "HEAD_INITS", "HEAD_NORMS", "ProbeClassifierConfig"]

HEAD_NORMS = ("none", "batchnorm")
HEAD_INITS = ("normal", "trunc_normal")
BN_EPS = 1e-6  # MAE's linear-probe BatchNorm1d(affine=False, eps=1e-6)


class ProbeClassifierConfig(PreTrainedConfig):
    r"""Configuration of [`ProbeClassifier`].

    Args:
        encoder_config (`PreTrainedConfig` or `dict`): config of the vision backbone (any `rae_hf.models.backbone`
            layout).
        image_size (`int`): encoder input side; images are resized to it (bicubic).
        image_mean / image_std (`list[float]`): the encoder's normalization (default: ImageNet's).
        latent_norm_eps (`float`, *optional*): set when the encoder came from an RAE with latent statistics (then
            stored as `encoder.latents_mean` / `encoder.latents_var`); used by the `latent*` features only.
        feature (`str`): feature variant (`cls`, `mean`, `cls_mean`, `last<n>`, `last<n>_avgpool`, `latent`,
            `latent_mean`; see `rae_hf.models.probe.FeatureVariant`).
        head_norm (`str`): `"none"` or `"batchnorm"` (BatchNorm1d without affine, eps 1e-6, before the linear layer).
        head_init / initializer_range: `"trunc_normal"` or `"normal"` init of the linear layer, and its std.
    Labels come from the usual `id2label` / `label2id`.
    """

    model_type = "rae_probe_classifier"
    sub_configs_defaults: ClassVar[dict[str, SubConfigSpec]] = {
        "encoder_config": SubConfigSpec(config_class=AutoConfig, model_type="dinov2"),
    }

    encoder_config: PreTrainedConfig | dict | None = None
    image_size: int = 224
    image_mean: list[float] | None = None
    image_std: list[float] | None = None
    latent_norm_eps: float | None = None
    feature: str = "cls"
    head_norm: str = "none"
    head_init: str = "trunc_normal"
    initializer_range: float = 0.01

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.image_mean = [float(v) for v in (self.image_mean or IMAGENET_DEFAULT_MEAN)]
        self.image_std = [float(v) for v in (self.image_std or IMAGENET_DEFAULT_STD)]
        try:
            FeatureVariant.from_name(self.feature)
        except ValueError as error:
            raise ValueError(f"feature={self.feature!r}: {error}") from error
        if self.head_norm not in HEAD_NORMS:
            raise ValueError(f"head_norm={self.head_norm!r} must be one of {HEAD_NORMS}.")
        if self.head_init not in HEAD_INITS:
            raise ValueError(f"head_init={self.head_init!r} must be one of {HEAD_INITS}.")
        for name in ("image_size", "initializer_range"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be positive.")
        for name in ("image_mean", "image_std"):
            if len(getattr(self, name)) != 3:
                raise ValueError(f"{name} needs 3 values, got {getattr(self, name)}.")
        if min(self.image_std) <= 0:
            raise ValueError(f"image_std must be positive, got {self.image_std}.")
        if self.latent_norm_eps is not None and self.latent_norm_eps <= 0:
            raise ValueError(f"latent_norm_eps={self.latent_norm_eps} must be positive (or None).")
