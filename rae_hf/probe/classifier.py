"""`ProbeClassifier`: a probed encoder plus its linear head, saved as a `PreTrainedModel` with `id2label`.

Why a class of our own rather than `AutoModelForImageClassification` of the backbone: only some backbones have one
(DINOv2, ViT, CLIP, SigLIP; not ViT-MAE nor RAE encoders), each fixes its own pooling (DINOv2: CLS + patch mean,
SigLIP/CLIP: patch mean, ViT: CLS) and none has MAE's BatchNorm head or an RAE's latent normalization. This one
reproduces exactly the feature variant and head a probe selected, for every supported encoder, and is registered
with `AutoConfig`/`AutoModelForImageClassification` (importing `rae_hf.probe` registers it).

Pixel contract: `forward` takes [0, 1] images of any size (resized and normalized inside, as in training).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.configuration_utils import SubConfigSpec
from transformers.modeling_outputs import ImageClassifierOutput

from rae_hf.probe.encoders import IMAGENET_MEAN, IMAGENET_STD, ProbeEncoder
from rae_hf.probe.features import ComponentSpec, FeatureVariant, check_variants, compute_components, variant_tensor
from rae_hf.probe.heads import BN_EPS, HEAD_INITS

__all__ = ["ProbeClassifier", "ProbeClassifierConfig"]

HEAD_NORMS = ("none", "batchnorm")


class ProbeClassifierConfig(PreTrainedConfig):
    r"""Configuration of [`ProbeClassifier`].

    Args:
        encoder_config (`PreTrainedConfig` or `dict`): config of the vision backbone (any `rae_hf.probe` encoder).
        image_size (`int`): encoder input side; images are resized to it (bicubic).
        image_mean / image_std (`list[float]`): the encoder's normalization.
        latent_norm_eps (`float`, *optional*): set when the encoder came from an RAE with latent statistics (then
            stored as `encoder.latents_mean` / `encoder.latents_var`); used by the `latent*` features only.
        feature (`str`): feature variant (`cls`, `mean`, `cls_mean`, `last<n>`, `last<n>_avgpool`, `latent`,
            `latent_mean`; see `rae_hf.probe.FeatureVariant`).
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
        self.image_mean = [float(v) for v in (self.image_mean or IMAGENET_MEAN)]
        self.image_std = [float(v) for v in (self.image_std or IMAGENET_STD)]
        FeatureVariant.from_name(self.feature)  # raises on an unknown name
        if self.head_norm not in HEAD_NORMS:
            raise ValueError(f"head_norm must be one of {HEAD_NORMS}, got {self.head_norm!r}.")
        if self.head_init not in HEAD_INITS:
            raise ValueError(f"head_init must be one of {HEAD_INITS}, got {self.head_init!r}.")
        if self.image_size <= 0 or self.initializer_range <= 0:
            raise ValueError("image_size and initializer_range must be positive.")


class ProbeClassifier(PreTrainedModel):
    """Encoder -> feature variant -> (BatchNorm) -> linear. Returns `ImageClassifierOutput` (loss with `labels`)."""

    config_class = ProbeClassifierConfig
    config: ProbeClassifierConfig
    base_model_prefix = "probe"
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def __init__(self, config: ProbeClassifierConfig):
        super().__init__(config)
        backbone = AutoModel.from_config(config.encoder_config)
        self.encoder = ProbeEncoder(
            backbone, config.image_size, config.image_mean, config.image_std, latent_norm_eps=config.latent_norm_eps
        )
        self.feature = FeatureVariant.from_name(config.feature)
        check_variants(self.encoder, [self.feature])
        self.components = ComponentSpec.for_variants([self.feature])
        dim = self.feature.dim(self.encoder)
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=BN_EPS) if config.head_norm == "batchnorm" else nn.Identity()
        self.classifier = nn.Linear(dim, config.num_labels)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Head: (trunc-)normal weights with std `initializer_range`, zero bias; preprocessing buffers from the
        config. The backbone initializes itself (its weights are then loaded)."""
        if module is getattr(self, "classifier", None):
            if self.config.head_init == "normal":
                init.normal_(module.weight, std=self.config.initializer_range)
            else:
                init.trunc_normal_(module.weight, std=self.config.initializer_range)
            init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm1d):
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)
        elif isinstance(module, ProbeEncoder):
            init.copy_(module.image_mean, torch.tensor(self.config.image_mean).view(-1, 1, 1))
            init.copy_(module.image_std, torch.tensor(self.config.image_std).view(-1, 1, 1))

    @classmethod
    def from_encoder(
        cls,
        encoder: ProbeEncoder,
        feature: str,
        id2label: dict[int, str],
        head_norm: str = "none",
        head_init: str = "trunc_normal",
        initializer_range: float = 0.01,
    ) -> ProbeClassifier:
        """A classifier around a copy of `encoder`'s weights, with a freshly initialized head."""
        id2label = {int(index): str(name) for index, name in id2label.items()}
        config = ProbeClassifierConfig(
            encoder_config=encoder.config,
            image_size=encoder.image_size,
            image_mean=encoder.image_mean.flatten().tolist(),
            image_std=encoder.image_std.flatten().tolist(),
            latent_norm_eps=encoder.latent_norm_eps,
            feature=feature,
            head_norm=head_norm,
            head_init=head_init,
            initializer_range=initializer_range,
            id2label=id2label,
            label2id={name: index for index, name in id2label.items()},
        )
        model = cls(config)
        model.encoder.load_state_dict(encoder.state_dict())
        return model

    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, return_dict: bool = True
    ) -> ImageClassifierOutput | tuple:
        """Logits `[B, num_labels]` for [0, 1] images `[B, 3, H, W]`; cross-entropy loss when `labels` are given."""
        features = variant_tensor(compute_components(self.encoder, pixel_values, self.components), self.feature)
        logits = self.classifier(self.norm(features))
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        if not return_dict:
            return (loss, logits) if loss is not None else (logits,)
        return ImageClassifierOutput(loss=loss, logits=logits)
