"""`ProbeClassifier`: a probed encoder plus its linear head, saved as a `PreTrainedModel` with `id2label`.

Why a class of our own rather than `AutoModelForImageClassification` of the backbone: only some backbones have one
(DINOv2, ViT, CLIP, SigLIP; not ViT-MAE nor RAE encoders), each fixes its own pooling (DINOv2: CLS + patch mean,
SigLIP/CLIP: patch mean, ViT: CLS) and none has MAE's BatchNorm head or an RAE's latent normalization. This one
reproduces exactly the feature variant and head a probe selected, for every supported encoder, and is registered
with `AutoConfig`/`AutoModelForImageClassification` by `import rae_hf` (it needs the package to load: its backbone
adapter lives in `rae_hf.models.backbone`).

Pixel contract: `forward` takes [0, 1] images of any size (resized and normalized inside, as in training).

A LoRA run saves the merged model plus its unmerged adapter (`out/adapter`, head and BatchNorm statistics included):
`PeftModel.from_pretrained(rae_hf.probe.finetune.lora_base(out), f"{out}/adapter")` gives the merged logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import ImageClassifierOutput

from ..backbone import FrozenBackbone
from .configuration_probe import BN_EPS, ProbeClassifierConfig
from .pooling import ComponentSpec, FeatureVariant, check_variants, compute_components, variant_tensor

__all__ = ["ProbeClassifier"]


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
        self.encoder = FrozenBackbone(
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
        elif isinstance(module, FrozenBackbone):
            init.copy_(module.image_mean, torch.tensor(self.config.image_mean).view(-1, 1, 1))
            init.copy_(module.image_std, torch.tensor(self.config.image_std).view(-1, 1, 1))

    @classmethod
    def from_encoder(
        cls,
        encoder: FrozenBackbone,
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
