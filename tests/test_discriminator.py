"""Tests for DiffAugment, 8-bit quantisation and the DINO discriminator on tiny offline ViTs."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from transformers import ViTConfig, ViTModel

from rae_hf.models.rae.diffaugment import diff_augment, translate
from rae_hf.models.rae.discriminator import DinoDiscriminator, quantize_8bit

TOKENS = (32 // 8) ** 2 + 1  # patches + CLS for the tiny config


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
    assert logits.shape == (2, 3 * ((48 // 8) ** 2 + 1))


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
    for _ in range(10):  # power iterations run in train-mode forwards
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
    assert not any(k.endswith("running_mean") for k in state)  # batch statistics only: identical across DDP ranks
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
