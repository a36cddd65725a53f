"""DiffAugment, 8-bit quantisation and the DINO discriminator (tiny offline ViTs), checked against the official rules:
translation then colour, CLS-free pre-LayerNorm features of blocks 2/5/8/11 + final, per-sample head normalization,
tanh-GELU trunk, spectral norm without warm-up iterations."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from transformers import BertConfig, BertModel, ViTConfig, ViTModel
from transformers.utils.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from rae_hf.models.rae.diffaugment import DEFAULT_POLICY, diff_augment, translate
from rae_hf.models.rae.discriminator import DinoDiscriminator, TokenNorm, quantize_8bit

TOKENS = (32 // 8) ** 2  # patch tokens (CLS dropped) of the tiny config


def _tiny_vit(num_layers: int = 12) -> ViTModel:
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        intermediate_size=64,
    )
    return ViTModel(config, add_pooling_layer=False)


def _tiny_disc(seed: int = 0, **kwargs: object) -> DinoDiscriminator:
    backbone = _tiny_vit()
    torch.manual_seed(seed)
    return DinoDiscriminator(backbone, input_size=32, **kwargs)


# ----------------------------------------------------------------------------- quantize_8bit


def test_quantize_8bit_values_and_straight_through_grad() -> None:
    torch.manual_seed(0)
    x = (torch.rand(2, 3, 8, 8) * 0.98 + 0.01).requires_grad_(True)
    q = quantize_8bit(x)
    scaled = q.detach() * 255
    torch.testing.assert_close(scaled, scaled.round(), rtol=0, atol=1e-4)
    assert (q - x).abs().max().item() <= 0.5 / 255 + 1e-6
    upstream = torch.randn_like(x)
    (q * upstream).sum().backward()
    torch.testing.assert_close(x.grad, upstream)


def test_quantize_8bit_clamps() -> None:
    q = quantize_8bit(torch.tensor([-0.3, 0.0, 1.0, 1.7]))
    torch.testing.assert_close(q, torch.tensor([0.0, 0.0, 1.0, 1.0]))


# ----------------------------------------------------------------------------- diff_augment


def test_diff_augment_shape_differentiable_and_seeded() -> None:
    x = (torch.rand(4, 3, 16, 16) * 2 - 1).requires_grad_(True)
    torch.manual_seed(5)
    out = diff_augment(x)
    assert out.shape == x.shape
    out.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    torch.manual_seed(5)
    torch.testing.assert_close(diff_augment(x), out, rtol=0, atol=0)
    torch.manual_seed(6)
    assert not torch.equal(diff_augment(x), out)


def test_diff_augment_rejects_unknown_policy() -> None:
    with pytest.raises(ValueError, match="policy"):
        diff_augment(torch.zeros(1, 3, 8, 8), policy=("colour",))


def test_translate_known_shift_zero_pads() -> None:
    x = torch.arange(1.0, 1 + 2 * 1 * 5 * 6).view(2, 1, 5, 6)
    out = translate(x, torch.tensor([1, -2]), torch.tensor([-2, 0]))
    # Sample 0: content moves down by 1 and left by 2.
    torch.testing.assert_close(out[0, 0, 1:, :-2], x[0, 0, :-1, 2:])
    assert (out[0, 0, 0] == 0).all() and (out[0, 0, :, -2:] == 0).all()
    # Sample 1: content moves up by 2.
    torch.testing.assert_close(out[1, 0, :-2], x[1, 0, 2:])
    assert (out[1, 0, -2:] == 0).all()


def test_diff_augment_translation_is_an_in_range_integer_shift() -> None:
    torch.manual_seed(3)
    x = torch.arange(1.0, 1 + 8 * 3 * 16 * 16).view(8, 3, 16, 16)
    out = diff_augment(x, policy=("translation",), translation_ratio=0.125)
    max_shift = 2  # 16 * 0.125
    shifts = []
    for b in range(x.shape[0]):
        matches = [
            (dy, dx)
            for dy in range(-max_shift, max_shift + 1)
            for dx in range(-max_shift, max_shift + 1)
            if torch.equal(out[b : b + 1], translate(x[b : b + 1], torch.tensor([dy]), torch.tensor([dx])))
        ]
        assert len(matches) == 1
        shifts.append(matches[0])
    assert any(shift != (0, 0) for shift in shifts)  # content actually moves for some samples


def test_diff_augment_color_ranges() -> None:
    torch.manual_seed(4)
    batch = 256
    # Constant image: saturation and contrast are no-ops, so only the brightness offset remains.
    const = torch.full((batch, 3, 4, 4), 0.2)
    offset = diff_augment(const, policy=("color",)) - const
    per_sample = offset[:, :1, :1, :1]
    torch.testing.assert_close(offset, per_sample.expand_as(offset))
    assert per_sample.min() >= -0.5 and per_sample.max() <= 0.5
    assert per_sample.min() < -0.4 and per_sample.max() > 0.4

    # Zero per-pixel channel mean: output = brightness + deviation * saturation * contrast.
    pattern = torch.tensor([0.5, -0.5, 0.0]).view(1, 3, 1, 1).expand(batch, 3, 4, 4)
    out = diff_augment(pattern, policy=("color",))
    brightness = out.mean(dim=1, keepdim=True)
    scale = (out - brightness)[:, 0, 0, 0] / 0.5
    torch.testing.assert_close(out, brightness + pattern * scale.view(-1, 1, 1, 1))
    assert brightness.min() >= -0.5 and brightness.max() <= 0.5
    assert scale.min() >= 0.0 and scale.max() <= 3.0  # U(0, 2) * U(0.5, 1.5)


def test_diff_augment_cutout_zeroes_a_block() -> None:
    torch.manual_seed(0)
    x = torch.ones(4, 3, 16, 16)
    out = diff_augment(x, policy=("cutout",), cutout_ratio=0.25)
    zeros = (out == 0).all(dim=1).flatten(1).sum(dim=1)
    assert (zeros > 0).all() and (zeros <= 16).all()  # at most a 4x4 hole, clipped at borders


# ----------------------------------------------------------------------------- discriminator


def test_discriminator_output_shape_and_gradients() -> None:
    disc = _tiny_disc()
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    logits = disc(images)
    assert logits.shape == (2, 5 * TOKENS)
    logits.mean().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in disc.backbone.parameters())
    heads = list(disc.heads_parameters())
    assert heads and all(p.requires_grad and p.grad is not None for p in heads)


def test_discriminator_resizes_and_interpolates_positions() -> None:
    disc = DinoDiscriminator(_tiny_vit(4), hook_blocks=(1, 3), input_size=48)
    logits = disc(torch.rand(2, 3, 20, 20), augment=False)
    assert logits.shape == (2, 3 * (48 // 8) ** 2)


def test_discriminator_augment_is_seeded() -> None:
    disc = _tiny_disc().eval()
    images = torch.rand(2, 3, 32, 32)
    torch.manual_seed(1)
    first = disc(images)
    torch.manual_seed(1)
    torch.testing.assert_close(disc(images), first, rtol=0, atol=0)
    assert not torch.allclose(disc(images, augment=False), first)


def test_discriminator_validates_hook_blocks() -> None:
    with pytest.raises(ValueError, match="4 blocks"):
        DinoDiscriminator(_tiny_vit(4), input_size=32)  # default hooks (2, 5, 8, 11) need 12 blocks


def test_backbone_stays_in_eval_mode() -> None:
    disc = _tiny_disc().train()
    assert disc.training and all(m.training for m in disc.heads.modules())
    assert not any(m.training for m in disc.backbone.modules())


def test_spectral_norm_active_on_all_convs() -> None:
    disc = _tiny_disc()
    convs = [m for m in disc.heads.modules() if isinstance(m, nn.Conv1d)]
    assert len(convs) == 3 * 5
    assert all(parametrize.is_parametrized(conv, "weight") for conv in convs)
    disc.train()
    for _ in range(40):  # power iterations run in train-mode forwards
        disc(torch.rand(2, 3, 32, 32), augment=False)
    for conv in convs:
        sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)
        assert sigma.item() == pytest.approx(1.0, abs=0.05)


def test_trainable_state_dict_round_trip() -> None:
    disc = _tiny_disc(seed=0)
    disc(torch.rand(4, 3, 32, 32))  # update the spectral-norm vectors
    state = disc.trainable_state_dict()
    assert state and not any("backbone" in k or "embeddings" in k or "layers." in k for k in state)
    assert any(k.endswith("_u") for k in state)
    assert not any("running" in k for k in state)  # no batch statistics: identical across DDP ranks
    assert len(state) == len(disc.heads.state_dict())

    other = _tiny_disc(seed=1)
    other.load_trainable_state_dict(state)
    for key, value in other.trainable_state_dict().items():
        assert torch.equal(value, state[key]), key
    images = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(other.eval()(images, augment=False), disc.eval()(images, augment=False))


def test_from_pretrained_backbone_local_path(tmp_path: os.PathLike) -> None:
    _tiny_vit(4).save_pretrained(tmp_path)
    disc = DinoDiscriminator.from_pretrained_backbone(str(tmp_path), hook_blocks=(0, 3), input_size=32)
    assert disc.backbone.pooler is None
    assert not any(p.requires_grad for p in disc.backbone.parameters())
    assert disc(torch.rand(2, 3, 32, 32)).shape == (2, 3 * TOKENS)


# ----------------------------------------------------------------------------- official rules (issue 10)


def _official_token_norm(x: torch.Tensor) -> torch.Tensor:
    """The official head normalization written from its definition: per sample and channel over the tokens."""
    mean = x.mean(dim=2, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=2, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-6)


def test_head_norm_is_per_sample_over_tokens() -> None:
    torch.manual_seed(0)
    norm = TokenNorm(3)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        norm.bias.copy_(torch.tensor([0.0, 1.0, -1.0]))
    x = torch.randn(2, 3, 7) * 3 + 1
    expected = _official_token_norm(x) * norm.weight.view(1, 3, 1) + norm.bias.view(1, 3, 1)
    torch.testing.assert_close(norm(x), expected)
    torch.testing.assert_close(norm(x[1:]), norm(x)[1:], rtol=0, atol=0)  # no batch statistics


def test_logits_of_one_image_independent_of_its_batch() -> None:
    disc = _tiny_disc().eval()
    images = torch.rand(4, 3, 32, 32)
    together = disc(images, augment=False)
    for i in range(4):
        torch.testing.assert_close(disc(images[i : i + 1], augment=False), together[i : i + 1], rtol=1e-5, atol=1e-5)
    # the rest of the batch (e.g. all-real vs all-fake) changes nothing
    mixed = disc(torch.cat([images[:2], torch.zeros(2, 3, 32, 32)]), augment=False)
    torch.testing.assert_close(mixed[:2], together[:2], rtol=1e-5, atol=1e-5)


def test_heads_read_pre_layernorm_patch_tokens_of_blocks_2_5_8_11_and_final() -> None:
    """Re-implementation from the facts: run the trunk block by block, take the final block's output and those of
    blocks 2, 5, 8, 11 (no final LayerNorm), drop CLS, feed heads 0..4 in that order."""
    disc = _tiny_disc().eval()
    images = torch.rand(2, 3, 32, 32)
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        hidden = disc.backbone.embeddings((images - mean) / std)
        outputs = []
        for layer in disc.backbone.layers:
            hidden = layer(hidden)
            outputs.append(hidden)
        selected = [outputs[-1]] + [outputs[b] for b in (2, 5, 8, 11)]
        expected = torch.cat(
            [head(f[:, 1:].transpose(1, 2)) for head, f in zip(disc.heads, selected, strict=True)], dim=1
        )
        logits = disc(images, augment=False)
        assert logits.shape == (2, 5 * TOKENS)
        torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
        # the final LayerNorm would change the final head's logits: the test can tell the two apart
        normed = disc.heads[0](disc.backbone.layernorm(outputs[-1])[:, 1:].transpose(1, 2))
        assert not torch.allclose(normed, expected[:, :TOKENS], atol=1e-3)


def test_trunk_uses_tanh_gelu_and_layer_norm_eps_1e_6(tmp_path: os.PathLike) -> None:
    disc = _tiny_disc()
    mlp = disc.backbone.layers[0].mlp
    h = torch.randn(5, 32)
    with torch.no_grad():
        torch.testing.assert_close(mlp(h), mlp.fc2(F.gelu(mlp.fc1(h), approximate="tanh")), rtol=0, atol=0)
        t = torch.linspace(-4, 4, 101)
        for layer in disc.backbone.layers:
            torch.testing.assert_close(layer.mlp.activation_fn(t), F.gelu(t, approximate="tanh"), rtol=0, atol=0)
        assert (F.gelu(t, approximate="tanh") - F.gelu(t)).abs().max() > 1e-4  # exact GELU differs
    assert all(m.eps == 1e-6 for m in disc.backbone.modules() if isinstance(m, nn.LayerNorm))
    _tiny_vit(4).save_pretrained(tmp_path)  # hidden_act "gelu", layer_norm_eps 1e-12 as the HF DINO port
    loaded = DinoDiscriminator.from_pretrained_backbone(str(tmp_path), hook_blocks=(1,), input_size=32)
    assert isinstance(loaded.backbone.layers[3].mlp.activation_fn, nn.GELU)
    assert loaded.backbone.layers[3].mlp.activation_fn.approximate == "tanh"
    kept = DinoDiscriminator(_tiny_vit(4), hook_blocks=(1,), input_size=32, official_trunk=False)
    assert kept.backbone.layers[0].layernorm_before.eps == 1e-12


def test_diff_augment_translates_before_colour() -> None:
    """Translation pads with zeros; colour applied afterwards moves the padding too, so no exact zero survives
    (colour first would leave the padded pixels at exactly 0)."""
    assert DEFAULT_POLICY == ("translation", "color")
    x = torch.full((16, 3, 16, 16), 0.25)
    x[:, 0] = 0.75
    torch.manual_seed(0)
    assert (diff_augment(x) == 0).sum() == 0
    torch.manual_seed(0)
    assert (diff_augment(x, policy=("color", "translation")) == 0).sum() > 0


def test_discriminator_default_augmentation_order() -> None:
    disc = _tiny_disc()
    assert disc.diffaug_policy == ("translation", "color")


def test_spectral_norm_starts_without_power_iterations() -> None:
    """As the official heads: u, v start as normalized Gaussian draws (PyTorch's parametrization alone would run
    15 power iterations at construction, making u^T W v the top singular value already)."""
    disc = _tiny_disc()
    conv = disc.heads[0].main[0][0]
    norm = conv.parametrizations.weight[0]
    weight = conv.parametrizations.weight.original.flatten(1)
    assert norm._u.norm().item() == pytest.approx(1.0) and norm._v.norm().item() == pytest.approx(1.0)
    estimate = torch.dot(norm._u, weight @ norm._v).abs()
    assert estimate < 0.5 * torch.linalg.matrix_norm(weight, ord=2)


def test_from_pretrained_backbone_rejects_a_text_model(tmp_path: os.PathLike) -> None:
    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    BertModel(config).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"discriminator_name_or_path.*'bert'"):
        DinoDiscriminator.from_pretrained_backbone(str(tmp_path))


def test_from_pretrained_backbone_rejects_missing_weights(tmp_path: os.PathLike) -> None:
    _tiny_vit(4).save_pretrained(tmp_path)
    path = os.path.join(tmp_path, "model.safetensors")
    state = {k: v for k, v in safetensors.torch.load_file(path).items() if ".0." not in k}
    safetensors.torch.save_file(state, path, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"discriminator_name_or_path.*lacks"):
        DinoDiscriminator.from_pretrained_backbone(str(tmp_path), hook_blocks=(1,), input_size=32)
