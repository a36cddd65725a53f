"""ViT variants: preset sizes, timm names, attention paths, drop path, per-block widths, masking, Auto classes."""

from __future__ import annotations

import pytest
import torch
from modeling_common import ModelTesterMixin
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification
from vit_helpers import TINY, tiny_batch, tiny_classifier, tiny_config

from rae_hf.models.vit import VIT_PRESETS, ViTVariantConfig, ViTVariantForImageClassification, ViTVariantModel

# Parameter counts computed from the layer shapes (reference table of vit_pruning.md).
PRESET_PARAMS_M = {
    "vit_tiny": 2.70,
    "vit_small": 21.34,
    "vit_base": 85.15,
    "vit_small_imagenet": 22.05,
    "vit_base_imagenet": 86.57,
    "vit_large_imagenet": 304.33,
}


def meta_params(preset: str, **overrides) -> int:
    with torch.device("meta"):
        model = ViTVariantForImageClassification(ViTVariantConfig(preset=preset, **overrides))
    return sum(p.numel() for p in model.parameters())


def shape_params(dim: int, depth: int, mlp: int, patch: int, tokens: int, classes: int) -> int:
    """Parameters from the shapes: patch conv, cls, pos, per block (2 norms, qkv, proj, fc1, fc2), norm, head."""
    block = 2 * 2 * dim + (3 * dim * dim + 3 * dim) + (dim * dim + dim) + (dim * mlp + mlp) + (mlp * dim + dim)
    return 3 * patch * patch * dim + dim + dim + tokens * dim + depth * block + 2 * dim + dim * classes + classes


class TestViTVariantModel(ModelTesterMixin):
    model_class = ViTVariantForImageClassification
    auto_class = AutoModelForImageClassification
    invalid_configs = (
        ({"image_size": 18}, "image_size"),
        ({"num_attention_heads": [2, 2, 2]}, "num_attention_heads"),
        ({"intermediate_size": -1}, "intermediate_size"),
        ({"drop_path_rate": 1.0}, "drop_path_rate"),
        ({"preset": "vit_huge"}, "preset"),
        ({"hidden_size": 0}, "hidden_size"),
    )

    def get_config(self, **overrides):
        return tiny_config(**overrides)

    def get_inputs(self, seed: int = 0) -> dict[str, torch.Tensor]:
        return {"pixel_values": tiny_batch(seed=seed)["pixel_values"]}


@pytest.mark.parametrize("preset", sorted(PRESET_PARAMS_M))
def test_preset_parameter_counts(preset):
    values = VIT_PRESETS[preset]
    tokens = (values["image_size"] // values["patch_size"]) ** 2 + 1
    expected = shape_params(
        values["hidden_size"], values["num_hidden_layers"], values["intermediate_size"], values["patch_size"],
        tokens, values["num_labels"],
    )  # fmt: skip
    assert meta_params(preset) == expected
    assert round(expected / 1e6, 2) == PRESET_PARAMS_M[preset]
    config = ViTVariantConfig(preset=preset)
    assert config.head_dim == 64 and config.num_labels == values["num_labels"]


def test_cifar100_counts_and_explicit_arguments_win():
    assert round(meta_params("vit_tiny", num_labels=100) / 1e6, 2) == 2.71
    assert round(meta_params("vit_small", num_labels=100) / 1e6, 2) == 21.38
    config = ViTVariantConfig(preset="vit_small", num_hidden_layers=3, image_size=64)
    assert (config.num_hidden_layers, config.image_size, config.hidden_size) == (3, 64, 384)


def test_timm_parameter_names():
    names = set(tiny_classifier().state_dict())
    for block in range(TINY["num_hidden_layers"]):
        for part in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            assert f"vit.blocks.{block}.{part}.weight" in names
    for name in ("vit.cls_token", "vit.pos_embed", "vit.patch_embed.proj.weight", "vit.norm.weight", "head.weight"):
        assert name in names


def test_sdpa_equals_eager_and_hand_attention():
    model = tiny_classifier()
    inputs = tiny_batch()["pixel_values"]
    eager = tiny_classifier()
    for module in eager.modules():
        if hasattr(module, "attn_implementation"):
            module.attn_implementation = "eager"
    torch.testing.assert_close(model(inputs).logits, eager(inputs).logits, atol=1e-5, rtol=1e-5)
    # hand reference of one attention module
    attn = model.vit.blocks[0].attn
    x = torch.randn(2, 5, TINY["hidden_size"])
    q, k, v = attn.qkv(x).view(2, 5, 3, 4, 8).permute(2, 0, 3, 1, 4)
    weights = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, dim=-1)
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(2, 5, 32))
    torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)


def test_drop_path_only_in_training():
    model = tiny_classifier(drop_path_rate=0.5)
    inputs = tiny_batch()["pixel_values"]
    assert torch.equal(model(inputs).logits, model(inputs).logits)
    model.train()
    torch.manual_seed(0)
    first = model(inputs).logits
    torch.manual_seed(1)
    assert not torch.allclose(first, model(inputs).logits)
    assert model.vit.blocks[0].drop_path.rate == 0.0 and model.vit.blocks[1].drop_path.rate == 0.5


def test_per_layer_heads_and_widths():
    model = tiny_classifier(num_attention_heads=[3, 0], intermediate_size=[7, 0])
    blocks = model.vit.blocks
    assert blocks[0].attn.qkv.weight.shape == (3 * 3 * 8, 32) and blocks[0].attn.proj.weight.shape == (32, 24)
    assert blocks[0].mlp.fc1.weight.shape == (7, 32) and blocks[1].attn.qkv.weight.numel() == 0
    x = torch.randn(2, 17, 32)
    torch.testing.assert_close(blocks[1](x), x + blocks[1].attn.proj.bias + blocks[1].mlp.fc2.bias)  # bias-only
    assert model(**tiny_batch()).logits.shape == (6, 5)


def test_bool_masked_pos_replaces_patch_tokens():
    model = tiny_classifier(use_mask_token=True)
    pixels = tiny_batch()["pixel_values"]
    mask = torch.zeros(6, 16, dtype=torch.bool)
    mask[:, :5] = True
    other = pixels.clone()
    other[:, :, :4, :] = torch.randn_like(other[:, :, :4, :])  # first patch row = patches 0-3: all masked
    out = model.vit(pixels, bool_masked_pos=mask).last_hidden_state
    assert torch.allclose(out, model.vit(other, bool_masked_pos=mask).last_hidden_state, atol=1e-6)
    assert not torch.allclose(out, model.vit(pixels).last_hidden_state)
    with pytest.raises(ValueError, match="use_mask_token"):
        tiny_classifier().vit(pixels, bool_masked_pos=mask)


def test_other_resolution_needs_interpolation():
    model = tiny_classifier()
    pixels = torch.randn(1, 3, 24, 24)
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        model(pixels)
    assert model(pixels, interpolate_pos_encoding=True).logits.shape == (1, 5)


def test_auto_classes_and_loss():
    config = tiny_config()
    assert isinstance(AutoConfig.for_model("vit_variant", **TINY), ViTVariantConfig)
    assert isinstance(AutoModel.from_config(config), ViTVariantModel)
    assert isinstance(AutoModelForImageClassification.from_config(config), ViTVariantForImageClassification)
    model = tiny_classifier()
    batch = tiny_batch()
    out = model(**batch)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, batch["labels"]))


def test_overfits_a_tiny_batch():
    torch.manual_seed(0)
    model = ViTVariantForImageClassification(tiny_config()).train()
    batch = tiny_batch(8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        optimizer.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]


def test_usable_as_a_probe_backbone(tmp_path):
    from rae_hf.models.vit import image_processor
    from rae_hf.probe import load_encoder

    model = tiny_classifier()
    model.save_pretrained(tmp_path)
    image_processor(model.config).save_pretrained(tmp_path)
    encoder = load_encoder(str(tmp_path))
    pixels = torch.rand(2, 3, 16, 16)
    tokens = encoder(pixels).blocks[-1]
    mean = torch.tensor(model.config.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(model.config.image_std).view(1, 3, 1, 1)
    expected = model.vit((pixels - mean) / std).last_hidden_state
    torch.testing.assert_close(tokens, expected, atol=1e-5, rtol=1e-5)
