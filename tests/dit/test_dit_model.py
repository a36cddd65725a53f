"""DiTDHModel: official parameter counts, presets, initialization, attention paths, mixin checks (save/load, remote
code without the package, gradient checkpointing, invalid configs), equality with an independent reference."""

from __future__ import annotations

import pytest
import torch
from modeling_common import ModelTesterMixin
from official_dit_reference import DiTwDDTHead, mae_sincos_2d, randomized

from rae_hf.models.dit import DITDH_PRESETS, DiTDHConfig, DiTDHModel

TINY = dict(
    in_channels=8,
    input_size=4,
    hidden_size=48,
    num_hidden_layers=2,
    num_attention_heads=3,
    head_hidden_size=64,
    head_num_layers=1,
    head_num_attention_heads=2,
    num_classes=5,
)


def tiny_config(**overrides) -> DiTDHConfig:
    return DiTDHConfig(**{**TINY, **overrides})


def tiny_inputs(seed: int = 0, batch: int = 3) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "latents": torch.randn(batch, 8, 4, 4, generator=generator),
        "timesteps": torch.rand(batch, generator=generator),
        "class_labels": torch.randint(0, 6, (batch,), generator=generator),  # 5 = the null class
    }


def meta_count(name: str, trainable: bool = False, **overrides) -> int:
    with torch.device("meta"):
        model = DiTDHModel(DiTDHConfig.from_preset(name, **overrides))
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)


class TestDiTDHModel(ModelTesterMixin):
    model_class = DiTDHModel
    invalid_configs = (
        ({"num_attention_heads": 5}, "num_attention_heads"),
        ({"head_num_attention_heads": 3}, "head_num_attention_heads"),
        ({"hidden_size": 30, "num_attention_heads": 3}, "hidden_size"),  # head size 10: not a multiple of 4
        ({"patch_size": 2}, "patch_size"),
        ({"class_dropout_prob": 1.0}, "class_dropout_prob"),
        ({"num_classes": -1}, "num_classes"),
        ({"input_size": 0}, "input_size"),
        ({"head_num_layers": 0}, "head_num_layers"),
        ({"mlp_ratio": 0.0}, "mlp_ratio"),
        ({"rms_norm_eps": 0.0}, "rms_norm_eps"),
    )

    def get_config(self, **overrides):
        return tiny_config(**overrides)

    def get_inputs(self, seed: int = 0) -> dict[str, torch.Tensor]:
        return tiny_inputs(seed)

    def make_model(self, seed: int = 0, **overrides):
        torch.manual_seed(seed)
        return randomized(DiTDHModel(self.get_config(**overrides)), seed).eval()


@pytest.mark.parametrize(
    ("name", "total", "trainable"),
    [("DiTDH-XL", 838_675_796, 838_380_628), ("DiTDH-S", 196_455_764, 196_357_204)],
)
def test_parameter_counts_match_official(name, total, trainable):
    """Every nn.Parameter of the official model on the meta device (768 channels, 16x16, 1000 classes)."""
    assert meta_count(name) == total
    assert meta_count(name, trainable=True) == trainable  # pos_embed and the Fourier W are frozen


def test_parameter_count_at_512_and_other_presets():
    assert meta_count("DiTDH-XL", input_size=32) == 839_560_532  # only pos_embed grows
    assert meta_count("DiTDH-S") < meta_count("DiTDH-B") < meta_count("DiTDH-L") < meta_count("DiTDH-XL")


def test_presets_explicit_arguments_win_and_errors():
    config = DiTDHConfig.from_preset("DiTDH-S", num_classes=10, num_attention_heads=4, input_size=32)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (384, 12, 4)
    assert (config.num_classes, config.input_size, config.intermediate_size) == (10, 32, 1024)
    assert (config.head_hidden_size, config.head_num_layers, config.head_num_attention_heads) == (2048, 2, 16)
    xl = DiTDHConfig.from_preset("DiTDH-XL")
    assert (xl.intermediate_size, xl.head_intermediate_size) == (3072, 5461)
    default = DiTDHConfig()
    assert {k: getattr(default, k) for k in DITDH_PRESETS["DiTDH-XL"]} == DITDH_PRESETS["DiTDH-XL"]
    assert DiTDHConfig.from_preset("DiTDH-B", intermediate_size=100).intermediate_size == 100
    with pytest.raises(ValueError, match="DiTDH-XL") as error:
        DiTDHConfig.from_preset("DiTDH-XXL")
    assert all(name in str(error.value) for name in DITDH_PRESETS)


def test_fresh_model_follows_the_official_init():
    torch.manual_seed(0)
    model = DiTDHModel(tiny_config())
    reference = torch.from_numpy(mae_sincos_2d(48, 4)).float()[None]
    torch.testing.assert_close(model.pos_embed, reference, atol=1e-6, rtol=0)
    assert not model.pos_embed.requires_grad and not model.t_embedder.W.requires_grad
    assert 0.5 < model.t_embedder.W.std() < 1.5  # N(0, 1), 256 draws
    for block in model.blocks:
        assert not block.adaLN_modulation[1].weight.any() and not block.adaLN_modulation[1].bias.any()
    assert not model.final_layer.linear.weight.any() and not model.final_layer.adaLN_modulation[1].weight.any()
    assert abs(model.y_embedder.embedding_table.weight.std().item() - 0.02) < 0.005
    assert model.y_embedder.embedding_table.weight.shape == (6, 48)  # null row
    assert model.x_embedder.proj.bias.abs().sum() == 0
    assert model.blocks[0].attn.qkv.bias.abs().sum() > 0  # PyTorch default Linear init (no xavier pass)
    assert not model(**tiny_inputs()).prediction.any()  # zero final layer: zero velocity


def test_matches_independent_reference_and_never_drops_labels():
    torch.manual_seed(0)
    reference = randomized(DiTwDDTHead(4, 8, (48, 64), (2, 1), (3, 2), num_classes=5), seed=1).eval()
    model = DiTDHModel(tiny_config())
    model.load_state_dict(reference.state_dict())
    inputs = tiny_inputs(batch=4)
    inputs["timesteps"] = torch.tensor([0.0, 0.3, 0.999, 1.0])
    with torch.no_grad():
        expected = reference(*inputs.values())
        actual = model(**inputs).prediction
        train_mode = model.train()(**inputs).prediction  # no label dropout inside the model
    assert (actual - expected).abs().max() <= 1e-5 and expected.abs().mean() > 0.05
    assert torch.equal(train_mode, actual)


def test_null_labels_scalar_time_and_shape_errors():
    model = TestDiTDHModel().make_model()
    inputs = tiny_inputs(batch=2)
    with torch.no_grad():
        null = model(inputs["latents"], torch.tensor([0.4, 0.4]), torch.tensor([5, 5])).prediction
        default = model(inputs["latents"], 0.4).prediction
    assert torch.equal(null, default)
    with pytest.raises(ValueError, match="latents must be"):
        model(torch.randn(2, 8, 8, 8), 0.5)


def test_sdpa_equals_eager_math():
    model = TestDiTDHModel().make_model()
    assert model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        sdpa = model(**tiny_inputs()).prediction
        model.config._attn_implementation = "eager"
        eager = model(**tiny_inputs()).prediction
    torch.testing.assert_close(sdpa, eager, atol=1e-5, rtol=1e-5)


def test_from_pretrained_keeps_fixed_parameters_frozen(tmp_path):
    model = TestDiTDHModel().make_model()
    model.save_pretrained(tmp_path)
    loaded = DiTDHModel.from_pretrained(tmp_path)
    assert not loaded.pos_embed.requires_grad and not loaded.t_embedder.W.requires_grad
    assert torch.equal(loaded.t_embedder.W, model.t_embedder.W)
    assert torch.equal(loaded.enc_feat_rope.freqs_cos, model.enc_feat_rope.freqs_cos)


def test_bf16_autocast_close_to_fp32():
    model = TestDiTDHModel().make_model()
    with torch.no_grad():
        fp32 = model(**tiny_inputs()).prediction
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(**tiny_inputs()).prediction
    assert bf16.dtype == torch.bfloat16
    assert (bf16.float() - fp32).abs().max() < 0.05 * fp32.abs().max()
