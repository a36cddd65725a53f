"""JiTModel: published sizes, initialization, layout of the official checkpoints, attention paths, mixin checks."""

from __future__ import annotations

import pytest
import torch
from jit_helpers import TINY, randomize, tiny_config, tiny_model
from modeling_common import ModelTesterMixin

from rae_hf.models.jit import JiTConfig, JiTModel
from rae_hf.models.jit.modeling_jit import apply_rope, rope_tables_2d, sincos_position_embedding_2d


def meta_param_count(name: str, **overrides) -> int:
    with torch.device("meta"):
        model = JiTModel(JiTConfig.from_preset(name, **overrides))
    return sum(p.numel() for p in model.parameters())


class TestJiTModel(ModelTesterMixin):
    model_class = JiTModel
    invalid_configs = (
        ({"num_attention_heads": 3}, "num_attention_heads"),
        ({"image_size": 18}, "patch_size"),
        ({"in_context_start": 4}, "in_context_start"),
        ({"prediction_type": "z"}, "prediction_type"),
        ({"dropout": 1.0}, "dropout"),
        ({"hidden_size": 36, "num_attention_heads": 2}, "hidden_size"),
    )

    def get_config(self, **overrides):
        return tiny_config(**overrides)

    def get_inputs(self, seed: int = 0) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        return {
            "x": torch.randn(2, 3, 16, 16, generator=generator),
            "t": torch.rand(2, generator=generator),
            "class_labels": torch.tensor([0, 3]),
        }

    def make_model(self, seed: int = 0, **overrides):
        torch.manual_seed(seed)
        return randomize(JiTModel(self.get_config(**overrides)), seed).eval()


@pytest.mark.parametrize(
    ("name", "expected"),
    [("JiT-B/16", 131_320_320), ("JiT-L/16", 459_139_808), ("JiT-H/16", 952_842_048), ("JiT-B/4", 130_674_480)],
)
def test_parameter_counts_match_official(name, expected):
    """Counts of the official model_jit.JiT (paper: B/16 131M, L/16 459M, H/16 953M)."""
    assert meta_param_count(name) == expected


def test_presets_and_overrides():
    config = JiTConfig.from_preset("JiT-H/32", num_classes=10)
    assert (config.image_size, config.patch_size, config.hidden_size, config.num_hidden_layers) == (512, 32, 1280, 32)
    assert (config.bottleneck_dim, config.in_context_start, config.dropout) == (256, 10, 0.2)
    assert config.intermediate_size == 3413 and config.noise_scale == 2.0 and config.num_classes == 10
    assert JiTConfig.from_preset("JiT-B/4").image_size == 64
    assert JiTConfig.from_preset("JiT-B/16", image_size=512).noise_scale == 2.0
    assert 1.9e9 < meta_param_count("JiT-G/16") < 2.1e9  # paper: 2B
    with pytest.raises(ValueError, match="preset"):
        JiTConfig.from_preset("JiT-X/16")


def test_official_state_dict_layout():
    """Names, shapes and order of the official JiT-B/4 at 64 (183 keys, jit_official_state_dict.txt)."""
    with torch.device("meta"):
        model = JiTModel(JiTConfig.from_preset("JiT-B/4"))
    state = model.state_dict()
    assert len(state) == 183
    head = [(k, tuple(v.shape)) for k, v in list(state.items())[:10]]
    assert head == [
        ("pos_embed", (1, 256, 768)),
        ("in_context_posemb", (1, 32, 768)),
        ("t_embedder.mlp.0.weight", (768, 256)),
        ("t_embedder.mlp.0.bias", (768,)),
        ("t_embedder.mlp.2.weight", (768, 768)),
        ("t_embedder.mlp.2.bias", (768,)),
        ("y_embedder.embedding_table.weight", (1001, 768)),
        ("x_embedder.proj1.weight", (128, 3, 4, 4)),
        ("x_embedder.proj2.weight", (768, 128, 1, 1)),
        ("x_embedder.proj2.bias", (768,)),
    ]
    block = {k[len("blocks.0.") :]: tuple(v.shape) for k, v in state.items() if k.startswith("blocks.0.")}
    assert block == {
        "norm1.weight": (768,),
        "attn.q_norm.weight": (64,),
        "attn.k_norm.weight": (64,),
        "attn.qkv.weight": (2304, 768),
        "attn.qkv.bias": (2304,),
        "attn.proj.weight": (768, 768),
        "attn.proj.bias": (768,),
        "norm2.weight": (768,),
        "mlp.w12.weight": (4096, 768),
        "mlp.w12.bias": (4096,),
        "mlp.w3.weight": (768, 2048),
        "mlp.w3.bias": (768,),
        "adaLN_modulation.1.weight": (4608, 768),
        "adaLN_modulation.1.bias": (4608,),
    }
    assert list(state)[-5:] == [
        "final_layer.norm_final.weight",
        "final_layer.linear.weight",
        "final_layer.linear.bias",
        "final_layer.adaLN_modulation.1.weight",
        "final_layer.adaLN_modulation.1.bias",
    ]
    assert not model.pos_embed.requires_grad


def test_untrained_model_outputs_exact_zeros():
    model = tiny_model(random_output=False)
    out = model(torch.randn(3, 3, 16, 16), torch.rand(3), torch.tensor([0, 1, 3])).prediction
    assert out.shape == (3, 3, 16, 16) and torch.equal(out, torch.zeros_like(out))


def test_published_initialization():
    model = tiny_model(random_output=False, hidden_size=64, num_classes=50)
    qkv = model.blocks[0].attn.qkv.weight
    bound = (6 / (qkv.shape[0] + qkv.shape[1])) ** 0.5  # xavier-uniform over the fused matrix
    assert qkv.abs().max() <= bound and qkv.abs().max() > 0.9 * bound
    assert torch.equal(model.blocks[0].attn.qkv.bias, torch.zeros_like(model.blocks[0].attn.qkv.bias))
    assert abs(model.y_embedder.embedding_table.weight.std().item() - 0.02) < 0.003
    assert abs(model.t_embedder.mlp[0].weight.std().item() - 0.02) < 0.003
    proj1 = model.x_embedder.proj1.weight
    bound1 = (6 / (proj1.shape[0] + proj1[0].numel())) ** 0.5
    assert bound1 * 0.9 < proj1.abs().max() <= bound1
    for block in model.blocks:
        assert not block.adaLN_modulation[1].weight.any()
    assert torch.allclose(model.pos_embed, sincos_position_embedding_2d(64, 4))


def test_sincos_layout():
    """First half encodes the column, second half the row; [sin..., cos...] per half."""
    emb = sincos_position_embedding_2d(8, 3)[0]  # token 5 = row 1, col 2
    assert torch.allclose(emb[5, :4], torch.tensor([0.9093, 0.0200, -0.4161, 0.9998]), atol=1e-4)
    assert torch.allclose(emb[5, 4:], torch.tensor([0.8415, 0.0100, 0.5403, 0.9999]), atol=1e-4)


def test_rope_rows_then_columns_and_pair_rotation():
    cos, sin = rope_tables_2d(8, 3, 10000.0)
    assert torch.allclose(
        sin[5], torch.tensor([1.0, 1.0, 0.01, 0.01, 2.0, 2.0, 0.02, 0.02]).sin()
    )  # half = 4 dims per axis, freqs 1, 0.01 each twice
    token = 5  # row 1, col 2
    assert torch.allclose(cos[token], torch.tensor([1.0, 1.0, 0.01, 0.01, 2.0, 2.0, 0.02, 0.02]).cos())
    x = torch.arange(8.0).view(1, 1, 1, 8)
    out = apply_rope(x, torch.zeros(1, 8), torch.ones(1, 8))  # pure rotation by 90 degrees
    assert out.flatten().tolist() == [-1.0, 0.0, -3.0, 2.0, -5.0, 4.0, -7.0, 6.0]


def test_sdpa_equals_fp32_eager_attention():
    model = tiny_model()
    inputs = (torch.randn(2, 3, 16, 16), torch.rand(2), torch.tensor([1, 2]))
    sdpa = model(*inputs).prediction
    model.config._attn_implementation = "eager"
    eager = model(*inputs).prediction
    torch.testing.assert_close(sdpa, eager, atol=1e-5, rtol=1e-5)


def test_class_label_changes_output_and_none_is_null_class():
    model = tiny_model()
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([0.3])
    out_null = model(x, t, torch.tensor([3])).prediction
    assert torch.equal(model(x, t).prediction, out_null)
    assert not torch.allclose(model(x, t, torch.tensor([0])).prediction, out_null)


def test_dropout_only_in_middle_blocks():
    model = JiTModel(tiny_config(num_hidden_layers=8, dropout=0.2, in_context_start=2))
    rates = [block.attn.proj_drop.p for block in model.blocks]
    assert rates == [0.0, 0.0, 0.2, 0.2, 0.2, 0.2, 0.0, 0.0]
    assert [block.mlp.drop.p for block in model.blocks] == rates


def test_in_context_tokens_do_not_leak_into_output_shape():
    for start in (0, 3):
        model = tiny_model(in_context_start=start)
        assert model(torch.randn(1, 3, 16, 16), 0.5).prediction.shape == (1, 3, 16, 16)
    assert TINY["num_in_context_tokens"] == 4


def test_position_embedding_stays_frozen_after_from_pretrained(tmp_path):
    """Before: `from_pretrained` returned `pos_embed.requires_grad == True`, so continued training updated it."""
    tiny_model().save_pretrained(tmp_path)
    loaded = JiTModel.from_pretrained(tmp_path)
    assert not loaded.pos_embed.requires_grad
    assert all(p.requires_grad for n, p in loaded.named_parameters() if n != "pos_embed")
