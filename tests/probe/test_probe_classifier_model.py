"""`rae_hf.models.probe`: the probe classifier as a model folder (shared model checks, Auto registration)."""

import pytest
import torch
from modeling_common import ModelTesterMixin
from transformers import AutoConfig, AutoModelForImageClassification, Dinov2Config

import rae_hf  # noqa: F401  (registers the Auto classes)
from rae_hf.models.probe import ProbeClassifier, ProbeClassifierConfig

LABELS = {0: "circle", 1: "square", 2: "triangle"}


class TestProbeClassifier(ModelTesterMixin):
    """A DINOv2 backbone (28 px, patch 14, 2 blocks), `last2_avgpool` features, BatchNorm head."""

    model_class = ProbeClassifier
    auto_class = AutoModelForImageClassification
    test_remote_code = False  # needs rae_hf (its backbone adapter lives in rae_hf.models.backbone)
    invalid_configs = (
        ({"feature": "last0"}, "feature"),
        ({"head_norm": "layernorm"}, "head_norm"),
        ({"head_init": "zeros"}, "head_init"),
        ({"image_size": 0}, "image_size"),
        ({"image_std": [0.5, 0.0, 0.5]}, "image_std"),
        ({"image_mean": [0.5, 0.5]}, "image_mean"),
    )

    def get_config(self, **overrides) -> ProbeClassifierConfig:
        encoder = Dinov2Config(
            image_size=28,
            patch_size=14,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
        )
        values = dict(encoder_config=encoder, image_size=28, feature="last2_avgpool", head_norm="batchnorm")
        return ProbeClassifierConfig(**{**values, "id2label": LABELS, **overrides})

    def get_inputs(self, seed: int = 0) -> dict[str, torch.Tensor]:
        return {"pixel_values": torch.rand(4, 3, 40, 40, generator=torch.Generator().manual_seed(seed))}

    def make_model(self, seed: int = 0, **overrides) -> ProbeClassifier:
        model = super().make_model(seed, **overrides)
        generator = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():  # non-trivial BatchNorm statistics, so a lost buffer would show
            model.norm.running_mean.copy_(torch.randn(model.norm.running_mean.shape, generator=generator))
            model.norm.running_var.copy_(torch.rand(model.norm.running_var.shape, generator=generator) + 0.5)
        return model

    def test_registered_with_the_auto_classes(self):
        config = AutoConfig.for_model("rae_probe_classifier", encoder_config=Dinov2Config(patch_size=14).to_dict())
        assert isinstance(config, ProbeClassifierConfig)
        model = AutoModelForImageClassification.from_config(self.get_config())
        assert isinstance(model, ProbeClassifier) and model.config.num_labels == 3

    def test_logits_are_the_head_of_the_selected_feature(self):
        """last2_avgpool = [CLS of block 1, CLS of block 2, patch mean of block 2] -> BatchNorm -> linear."""
        model = self.make_model()
        images = self.get_inputs()["pixel_values"]
        with torch.no_grad():
            out = model.encoder(images, num_blocks=2)
            blocks = out.blocks
            features = torch.cat([blocks[0][:, 0], blocks[1][:, 0], blocks[1][:, 1:].mean(1)], dim=1)
            expected = model.classifier(model.norm(features))
            logits = model(images).logits
        torch.testing.assert_close(logits, expected)
        loss = model(images, labels=torch.tensor([0, 1, 2, 0])).loss
        assert loss is not None and loss.ndim == 0


@pytest.mark.parametrize("feature", ["cls", "mean", "latent_mean"])
def test_every_feature_kind_builds(feature):
    model = TestProbeClassifier().make_model(feature=feature)
    assert model(torch.rand(2, 3, 28, 28)).logits.shape == (2, 3)
