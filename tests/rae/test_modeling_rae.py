"""Tests for RAEConfig / RAEModel / latent statistics on tiny offline encoders (DINOv2, DINOv2-reg, SigLIP, ViT-MAE)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import copy
import json
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from modeling_common import ModelTesterMixin
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset
from transformers import (
    AutoModel,
    BitImageProcessor,
    Dinov2Config,
    Dinov2WithRegistersConfig,
    SiglipConfig,
    SiglipImageProcessor,
    SiglipModel,
    SiglipVisionConfig,
    ViTMAEConfig,
    ViTMAEForPreTraining,
)

import rae_hf  # noqa: F401  (registers RAEConfig/RAEModel with the Auto classes)
from rae_hf.models.rae import DECODER_PRESETS, RAEConfig, RAEModel
from rae_hf.models.rae.latent_stats import RunningMoments, compute_latent_stats
from rae_hf.models.rae.modeling_rae import sincos_position_embedding_2d

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406])
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225])
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
DECODER = {
    "decoder_hidden_size": 32,
    "decoder_num_hidden_layers": 2,
    "decoder_num_attention_heads": 2,
    "decoder_intermediate_size": 64,
    "decoder_patch_size": 8,
}

# name -> (encoder config factory, encoder_input_size, leading CLS/register tokens, final-norm attribute)
ENCODERS = {
    "dinov2": (lambda: Dinov2Config(image_size=56, patch_size=14, **TINY), 56, 1, "layernorm"),
    "dinov2_reg": (
        lambda: Dinov2WithRegistersConfig(image_size=56, patch_size=14, num_register_tokens=4, **TINY),
        56,
        5,
        "layernorm",
    ),
    "siglip": (lambda: SiglipVisionConfig(image_size=32, patch_size=8, **TINY), 32, 0, "post_layernorm"),
    "siglip_interp": (lambda: SiglipVisionConfig(image_size=32, patch_size=8, **TINY), 48, 0, "post_layernorm"),
    "mae": (lambda: ViTMAEConfig(image_size=32, patch_size=8, **TINY), 32, 1, "layernorm"),
    "mae_interp": (lambda: ViTMAEConfig(image_size=32, patch_size=8, **TINY), 48, 1, "layernorm"),
}


# ----------------------------------------------------------------------------------------------------- helpers


def _randomize_(module: nn.Module, seed: int) -> nn.Module:
    """Give every parameter (LayerNorm scale/shift included) non-trivial values so affine/no-affine differ."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(0.2 * torch.randn(param.shape, generator=generator))
    return module.eval()


def _save_encoder(name: str, path, seed: int = 0) -> nn.Module:
    """Create a tiny pretrained-looking encoder of the given kind, save it to `path` and return it."""
    factory = ENCODERS[name][0]
    torch.manual_seed(seed)
    encoder = _randomize_(AutoModel.from_config(factory()), seed)
    encoder.save_pretrained(path)
    return encoder


def _layers(encoder: nn.Module) -> nn.ModuleList:
    for path in ("encoder.layer", "encoder.layers", "layers"):
        module = encoder
        try:
            for attribute in path.split("."):
                module = getattr(module, attribute)
        except AttributeError:
            continue
        if isinstance(module, nn.ModuleList):
            return module
    raise AssertionError(f"no transformer layers found in {type(encoder).__name__}")


def _manual_preprocess(images: torch.Tensor, size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    if images.shape[-2:] != (size, size):
        images = F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False)
    return (images - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


@torch.no_grad()
def _reference_hidden(encoder: nn.Module, model_type: str, inputs: torch.Tensor, native: int) -> torch.Tensor:
    """Token sequence after the last encoder layer (before the final norm), computed from the encoder's modules."""
    interpolate = inputs.shape[-1] != native
    embeddings = encoder.embeddings
    if model_type == "vit_mae":  # no shuffling at all: identity token order by construction
        patches = embeddings.patch_embeddings(inputs)
        pos = (
            embeddings.interpolate_pos_encoding(patches, *inputs.shape[-2:])
            if interpolate
            else embeddings.position_embeddings
        )
        cls = (embeddings.cls_token + pos[:, :1]).expand(inputs.shape[0], -1, -1)
        hidden = torch.cat([cls, patches + pos[:, 1:]], dim=1)
    elif model_type.startswith("siglip"):
        hidden = embeddings(inputs, interpolate_pos_encoding=interpolate)
    else:
        hidden = embeddings(inputs)
    for layer in _layers(encoder):
        out = layer(hidden, None)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


def _reference_latents(encoder, model_type, inputs, native, prefix, eps) -> torch.Tensor:
    """Hand-made RAE latents: layers -> LayerNorm without affine -> drop `prefix` tokens -> `[B, C, h, w]`."""
    hidden = _reference_hidden(encoder, model_type, inputs, native)
    channels = hidden.shape[-1]
    grid = math.isqrt(hidden.shape[1] - prefix)
    assert hidden.shape[1] == prefix + grid * grid
    tokens = F.layer_norm(hidden, (channels,), eps=eps)[:, prefix:]
    return tokens.transpose(1, 2).reshape(inputs.shape[0], channels, grid, grid)


def _tiny_rae(seed: int = 0, encoder: str = "dinov2", **overrides) -> RAEModel:
    """A tiny DINOv2(+decoder) RAE built from configs, in eval mode."""
    factory, size, _, _ = ENCODERS[encoder]
    kwargs = {**DECODER, "encoder_input_size": size, **overrides}
    torch.manual_seed(seed)
    model = RAEModel(RAEConfig(encoder_config=factory(), **kwargs))
    _randomize_(model.encoder, seed + 1)  # frozen encoder with non-trivial weights
    return model.eval()


def _images(batch: int, size: int = 56, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


class _DictDataset(Dataset):
    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return {"pixel_values": self.images[index]}


# ------------------------------------------------------------------------------------ 1. encoders and latents


@pytest.mark.parametrize("name", list(ENCODERS))
def test_latents_match_hand_computed_encoder_reference(name, tmp_path):
    """Latents = encoder layers + non-affine final LayerNorm, CLS/register tokens dropped, reshaped to [B,C,h,w]."""
    _, size, prefix, norm_name = ENCODERS[name]
    original = _save_encoder(name, tmp_path / "encoder")
    model = RAEModel.from_encoder_pretrained(str(tmp_path / "encoder"), encoder_input_size=size, **DECODER).eval()
    config = original.config

    norm = getattr(model.encoder, norm_name)
    assert isinstance(norm, nn.LayerNorm)
    assert norm.elementwise_affine is False and norm.weight is None and norm.bias is None
    assert norm.eps == config.layer_norm_eps

    default_mean = torch.full((3,), 0.5) if name.startswith("siglip") else IMAGENET_MEAN
    default_std = torch.full((3,), 0.5) if name.startswith("siglip") else IMAGENET_STD
    images = _images(2, size=40)
    inputs = _manual_preprocess(images, size, default_mean, default_std)
    expected = _reference_latents(original, config.model_type, inputs, config.image_size, prefix, config.layer_norm_eps)

    latents = model.encode(images).latents
    grid = size // config.patch_size
    assert latents.shape == (2, 32, grid, grid)
    torch.testing.assert_close(latents, expected, atol=1e-5, rtol=1e-5)
    # the check is discriminative: the encoder's own affine final norm would give other latents
    hidden = _reference_hidden(original, config.model_type, inputs, config.image_size)
    affine = getattr(original, norm_name)(hidden)[:, prefix:].transpose(1, 2).reshape_as(latents)
    assert (affine - latents).abs().max() > 1e-2


@pytest.mark.parametrize("name", ["mae", "mae_interp"])
def test_mae_runs_unmasked_in_identity_order_and_deterministically(name, tmp_path):
    """ViT-MAE: mask_ratio 0, every patch kept in raster order (== forward with noise=arange), no random masking."""
    _, size, _, _ = ENCODERS[name]
    _save_encoder(name, tmp_path / "mae")
    model = RAEModel.from_encoder_pretrained(str(tmp_path / "mae"), encoder_input_size=size, **DECODER).eval()
    assert model.encoder.config.mask_ratio == 0.0
    images = _images(3, size=size)
    first, second = model.encode(images).latents, model.encode(images).latents
    assert torch.equal(first, second)

    inputs = model.preprocess(images)
    num = (size // 8) ** 2
    kwargs = dict(model._encoder_kwargs)
    with torch.no_grad():
        arange = torch.arange(num).float().expand(3, -1)
        out = model.encoder(pixel_values=inputs, noise=arange, **kwargs)
        assert torch.equal(out.ids_restore, torch.arange(num).expand(3, -1))
        assert out.mask.sum() == 0
        tokens = out.last_hidden_state[:, 1:]
        torch.testing.assert_close(model.tokens_to_latents(tokens), first, atol=1e-6, rtol=0)
        # a shuffled order (reversed noise) keeps the same tokens but in another order: order matters here
        shuffled = model.encoder(pixel_values=inputs, noise=arange.flip(-1), **kwargs).last_hidden_state[:, 1:]
    assert (shuffled - tokens).abs().max() > 1e-2


def test_composite_siglip_checkpoint_uses_vision_tower(tmp_path):
    """A full SiglipModel checkpoint gives its vision tower (weights copied, SigLIP 0.5 stats, no pooling head)."""
    torch.manual_seed(0)
    text = {"vocab_size": 100, "max_position_embeddings": 16, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    full = SiglipModel(
        SiglipConfig(vision_config={"image_size": 32, "patch_size": 8, **TINY}, text_config={**text, **TINY})
    )
    _randomize_(full, 3).save_pretrained(tmp_path / "siglip")
    model = RAEModel.from_encoder_pretrained(str(tmp_path / "siglip"), encoder_input_size=32, **DECODER).eval()

    assert model.config.encoder_config.model_type == "siglip_vision_model"
    assert type(model.encoder).__name__ == "SiglipVisionModel"
    assert not hasattr(model.encoder, "text_model")
    assert getattr(model.encoder, "head", None) is None
    assert model.config.encoder_image_mean == [0.5] * 3 and model.config.encoder_image_std == [0.5] * 3
    vision = full.vision_model
    assert torch.equal(model.encoder.embeddings.patch_embedding.weight, vision.embeddings.patch_embedding.weight)
    assert torch.equal(model.encoder.encoder.layers[1].mlp.fc2.weight, vision.encoder.layers[1].mlp.fc2.weight)

    images = _images(2, size=32)
    inputs = _manual_preprocess(images, 32, torch.full((3,), 0.5), torch.full((3,), 0.5))
    expected = _reference_latents(vision, "siglip_vision_model", inputs, 32, 0, 1e-6)
    torch.testing.assert_close(model.encode(images).latents, expected, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------- 2. from_encoder_pretrained


def test_from_encoder_pretrained_reads_image_processor(tmp_path):
    """Weights are copied; size/mean/std come from a saved image-processor config; explicit size wins."""
    original = _save_encoder("dinov2", tmp_path / "enc")
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.6, 0.7]
    BitImageProcessor(crop_size={"height": 56, "width": 56}, image_mean=mean, image_std=std).save_pretrained(
        tmp_path / "enc"
    )
    model = RAEModel.from_encoder_pretrained(str(tmp_path / "enc"), **DECODER)
    assert model.config.encoder_input_size == 56 and model.config.latent_grid_size == 4
    assert model.config.encoder_image_mean == pytest.approx(mean)
    assert model.config.encoder_image_std == pytest.approx(std)
    torch.testing.assert_close(model.image_mean.flatten(), torch.tensor(mean), atol=0, rtol=0)
    torch.testing.assert_close(model.image_std.flatten(), torch.tensor(std), atol=0, rtol=0)
    assert model.config.encoder_name_or_path == str(tmp_path / "enc")
    assert torch.equal(
        model.encoder.embeddings.patch_embeddings.projection.weight,
        original.embeddings.patch_embeddings.projection.weight,
    )
    assert torch.equal(model.encoder.encoder.layer[1].mlp.fc1.weight, original.encoder.layer[1].mlp.fc1.weight)
    assert torch.equal(model.encoder.embeddings.cls_token, original.embeddings.cls_token)
    assert not any(p.requires_grad for p in model.encoder.parameters())

    override = RAEModel.from_encoder_pretrained(str(tmp_path / "enc"), encoder_input_size=28, **DECODER)
    assert override.config.encoder_input_size == 28 and override.config.latent_grid_size == 2


def test_from_encoder_pretrained_siglip_processor_size(tmp_path):
    """A SigLIP processor's `size` (no crop) sets the input size; its mean/std are used."""
    _save_encoder("siglip", tmp_path / "sig")
    SiglipImageProcessor(size={"height": 48, "width": 48}, image_mean=[0.4] * 3, image_std=[0.3] * 3).save_pretrained(
        tmp_path / "sig"
    )
    model = RAEModel.from_encoder_pretrained(str(tmp_path / "sig"), **DECODER)
    assert model.config.encoder_input_size == 48 and model.config.latent_grid_size == 6
    assert model.config.encoder_image_mean == pytest.approx([0.4] * 3)
    assert model.config.encoder_image_std == pytest.approx([0.3] * 3)
    assert model._encoder_kwargs == {"interpolate_pos_encoding": True}


@pytest.mark.parametrize(("name", "mean", "std"), [("dinov2", IMAGENET_MEAN, IMAGENET_STD), ("siglip", 0.5, 0.5)])
def test_from_encoder_pretrained_defaults_without_processor(name, mean, std, tmp_path):
    """Without preprocessor_config.json: input 224 and the encoder type's default mean/std."""
    _save_encoder(name, tmp_path / "enc")
    model = RAEModel.from_encoder_pretrained(str(tmp_path / "enc"), **DECODER)
    assert model.config.encoder_input_size == 224
    torch.testing.assert_close(model.image_mean.flatten(), torch.as_tensor(mean).expand(3).float())
    torch.testing.assert_close(model.image_std.flatten(), torch.as_tensor(std).expand(3).float())


def test_from_encoder_pretrained_mae_pretraining_checkpoint(tmp_path):
    """A ViTMAEForPreTraining checkpoint (like facebook/vit-mae-base) contributes its `vit` encoder weights."""
    torch.manual_seed(0)
    config = ViTMAEConfig(
        image_size=32,
        patch_size=8,
        decoder_hidden_size=32,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=64,
        **TINY,
    )
    full = _randomize_(ViTMAEForPreTraining(config), 5)
    full.save_pretrained(tmp_path / "mae")
    model = RAEModel.from_encoder_pretrained(str(tmp_path / "mae"), encoder_input_size=32, **DECODER)
    assert type(model.encoder).__name__ == "ViTMAEModel"
    pretrained = full.vit.state_dict()
    ours = model.encoder.state_dict()
    assert set(pretrained) - set(ours) == {"layernorm.weight", "layernorm.bias"}  # final norm loses its affine
    assert all(torch.equal(ours[key], pretrained[key]) for key in ours)
    assert torch.equal(
        model.encoder.embeddings.patch_embeddings.projection.weight,
        full.vit.embeddings.patch_embeddings.projection.weight,
    )


def test_from_encoder_pretrained_rejects_incomplete_checkpoint(tmp_path):
    """An encoder checkpoint lacking a layer's weights must raise instead of leaving random encoder weights."""
    _save_encoder("dinov2", tmp_path / "enc")
    state = load_file(tmp_path / "enc" / "model.safetensors")
    state = {k: v for k, v in state.items() if "layer.1." not in k}
    save_file(state, tmp_path / "enc" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError):
        RAEModel.from_encoder_pretrained(str(tmp_path / "enc"), encoder_input_size=56, **DECODER)


# ---------------------------------------------------------------------------------------------- 3. preprocess


def test_preprocess_bicubic_resize_and_normalization():
    """preprocess = bicubic resize to encoder_input_size, then (x - mean) / std with the config's values."""
    model = _tiny_rae(encoder_image_mean=[0.3, 0.4, 0.5], encoder_image_std=[0.2, 0.25, 0.3])
    mean, std = torch.tensor([0.3, 0.4, 0.5]), torch.tensor([0.2, 0.25, 0.3])
    images = _images(2, size=37)
    resized = F.interpolate(images, size=(56, 56), mode="bicubic", align_corners=False)
    expected = (resized - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    out = model.preprocess(images)
    assert out.shape == (2, 3, 56, 56)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
    # bilinear would be a different resize: the check is discriminative
    bilinear = F.interpolate(images, size=(56, 56), mode="bilinear", align_corners=False)
    assert (((bilinear - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)) - out).abs().max() > 1e-3
    # already at the input size: only normalization
    exact = _images(1, size=56)
    torch.testing.assert_close(model.preprocess(exact), (exact - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))


# ---------------------------------------------------------------------------------- 4. decoder and image size


def test_decoder_output_size_is_grid_times_decoder_patch():
    """DINOv2 patch 14 at 56 px -> 4x4 grid; decoder patch 16 -> 64 px reconstruction."""
    model = _tiny_rae(decoder_patch_size=16)
    assert model.config.latent_grid_size == 4 and model.config.image_size == 64
    out = model(_images(2, size=50))
    assert out.latents.shape == (2, 32, 4, 4)
    assert out.reconstruction.shape == (2, 3, 64, 64)
    assert model.decoder.decoder_pred.out_features == 16 * 16 * 3


def test_paper_arithmetic_224_to_256_without_building():
    """Config only: DINOv2-B-like patch 14 at 224 -> 16x16x768 latents and a 256 px image with ViT-XL sizes."""
    config = RAEConfig(
        encoder_config=Dinov2WithRegistersConfig(patch_size=14, num_register_tokens=4),
        encoder_input_size=224,
        decoder_preset="ViT-XL",
    )
    assert config.latent_grid_size == 16
    assert config.latent_channels == 768
    assert config.image_size == 256
    assert (config.decoder_hidden_size, config.decoder_num_hidden_layers) == (1152, 28)
    assert (config.decoder_num_attention_heads, config.decoder_intermediate_size) == (16, 4096)
    mae = RAEConfig(encoder_config=ViTMAEConfig(patch_size=16), encoder_input_size=256)
    assert (mae.latent_grid_size, mae.image_size) == (16, 256)


def test_decode_maps_back_with_encoder_mean_std():
    """decode(z) == decoder(tokens) * std + mean, tokens being the row-major flattening of z."""
    model = _tiny_rae(encoder_image_mean=[0.1, 0.5, 0.9], encoder_image_std=[0.3, 0.2, 0.1])
    latents = torch.randn(2, 32, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        tokens = torch.stack([latents[:, :, i, j] for i in range(4) for j in range(4)], dim=1)
        raw = model.decoder(tokens)
        expected = raw * torch.tensor([0.3, 0.2, 0.1]).view(1, 3, 1, 1) + torch.tensor([0.1, 0.5, 0.9]).view(1, 3, 1, 1)
        out = model.decode(latents).reconstruction
    assert out.shape == (2, 3, 32, 32)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
    assert model.decode(latents, return_dict=False)[0].shape == (2, 3, 32, 32)


def test_tokens_latents_layout_and_unpatchify_order():
    """tokens_to_latents is row-major; unpatchify puts patch (i, j) pixel (r, s, c) at (c, i*p+r, j*p+s)."""
    model = _tiny_rae()
    tokens = torch.randn(2, 16, 32)
    latents = model.tokens_to_latents(tokens)
    assert torch.equal(latents[:, :, 1, 2], tokens[:, 1 * 4 + 2])
    p, grid = 8, 4
    patches = torch.randn(2, grid * grid, p * p * 3)
    image = model.decoder.unpatchify(patches)
    expected = torch.empty(2, 3, grid * p, grid * p)
    for i in range(grid):
        for j in range(grid):
            block = patches[:, i * grid + j].reshape(2, p, p, 3).permute(0, 3, 1, 2)
            expected[:, :, i * p : (i + 1) * p, j * p : (j + 1) * p] = block
    assert torch.equal(image, expected)


def test_sincos_position_embedding_matches_mae_numpy():
    """The fixed 2-D sin-cos embedding equals MAE's numpy get_2d_sincos_pos_embed (zero CLS row first)."""

    def one_d(dim, pos):
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    dim, grid = 32, 4
    mesh = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64))  # w first (MAE)
    grid_arr = np.stack(mesh, axis=0).reshape(2, 1, grid, grid)
    ref = np.concatenate([one_d(dim // 2, grid_arr[0]), one_d(dim // 2, grid_arr[1])], axis=1)
    ref = np.concatenate([np.zeros((1, dim)), ref], axis=0)
    ours = sincos_position_embedding_2d(dim, grid)
    assert ours.shape == (1, grid * grid + 1, dim)
    np.testing.assert_allclose(ours[0].numpy(), ref, atol=1e-6)
    model = _tiny_rae()
    torch.testing.assert_close(model.decoder.decoder_pos_embed, ours)


# -------------------------------------------------------------------------------------------------- 5. noise


def test_noise_only_in_training_mode():
    """Eval encode is deterministic and noise-free; train encode adds noise; noise_tau=0 makes train == eval."""
    model = _tiny_rae(noise_tau=0.8)
    images = _images(4)
    clean = model.tokens_to_latents(model.encode_tokens(images))
    first, second = model.encode(images).latents, model.encode(images).latents
    assert torch.equal(first, second) and torch.equal(first, clean)
    model.train()
    noisy_a, noisy_b = model.encode(images).latents, model.encode(images).latents
    assert (noisy_a - clean).abs().max() > 1e-3
    assert not torch.equal(noisy_a, noisy_b)
    assert torch.equal(model.eval().encode(images).latents, clean)

    quiet = _tiny_rae(noise_tau=0.0)
    quiet_eval = quiet.encode(images).latents
    assert torch.equal(quiet.train().encode(images).latents, quiet_eval)
    torch.testing.assert_close(quiet_eval, clean)  # same seed -> same weights


@pytest.mark.parametrize("distribution", ["uniform", "half_normal"])
def test_noise_sigma_distribution(distribution):
    """Per-sample noise std: uniform -> in [0, tau] with mean tau/2; half_normal -> mean tau*sqrt(2/pi), often > tau."""
    tau = 0.8
    model = _tiny_rae(noise_tau=tau, noise_distribution=distribution)
    images = _images(128)
    clean = model.encode(images).latents
    torch.manual_seed(1234)
    noise = model.train().encode(images).latents - clean
    per_sample = noise.flatten(1).std(dim=1)
    assert noise.flatten(1).mean(dim=1).abs().max() < 0.2
    if distribution == "uniform":
        assert per_sample.max() < 1.12 * tau  # 512 values per sample: estimation error of a few %
        assert per_sample.min() < 0.1 * tau and per_sample.max() > 0.9 * tau
        assert per_sample.mean().item() == pytest.approx(tau / 2, rel=0.2)
    else:
        assert (per_sample > 1.3 * tau).sum() >= 5
        assert per_sample.mean().item() == pytest.approx(tau * math.sqrt(2 / math.pi), rel=0.2)


def test_encoder_frozen_and_kept_in_eval_mode():
    """model.train() switches only the decoder; the encoder has no trainable params and gets no gradients."""
    model = _tiny_rae(noise_tau=0.5).train()
    assert model.training and model.decoder.training
    assert not model.encoder.training and not any(m.training for m in model.encoder.modules())
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.decoder.parameters())
    out = model(_images(2))
    assert not out.latents.requires_grad
    out.reconstruction.square().mean().backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.decoder.parameters())
    model.train(False)
    assert not model.training and not model.decoder.training and not model.encoder.training


def test_encoder_in_eval_mode_right_after_construction():
    """The frozen encoder is in eval mode from construction on (dropout off), not only after model.train()."""
    config = Dinov2Config(image_size=56, patch_size=14, hidden_dropout_prob=0.5, **TINY)
    model = RAEModel(RAEConfig(encoder_config=config, encoder_input_size=56, noise_tau=0.0, **DECODER))
    images = _images(2)
    assert torch.equal(model.encode_tokens(images), model.encode_tokens(images))
    assert not model.encoder.training


# ------------------------------------------------------------------------------------------ 6. latent stats


def _all_latents(model: RAEModel, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([model.tokens_to_latents(model.encode_tokens(images[i : i + 1])) for i in range(len(images))])


def test_compute_latent_stats_equals_two_pass():
    """Streaming stats over a DataLoader == two-pass float64 mean/var, for any batch size; max_samples honoured."""
    model = _tiny_rae()
    images = _images(10, size=44)
    latents = _all_latents(model, images).double()
    mean, var = latents.mean(0), latents.var(0, unbiased=False)
    for batch_size in (1, 3, 4, 10):
        loader = DataLoader(_DictDataset(images), batch_size=batch_size)
        got_mean, got_var, count = compute_latent_stats(model, loader)
        assert count == 10 and got_mean.shape == (32, 4, 4) and got_mean.dtype == torch.float32
        torch.testing.assert_close(got_mean.double(), mean, atol=1e-6, rtol=0)
        torch.testing.assert_close(got_var.double(), var, atol=1e-6, rtol=0)
    assert var.min() > 1e-4  # non-degenerate statistics

    loader = DataLoader(_DictDataset(images), batch_size=3)
    got_mean, got_var, count = compute_latent_stats(model, loader, max_samples=7)
    assert count == 7
    torch.testing.assert_close(got_mean.double(), latents[:7].mean(0), atol=1e-6, rtol=0)
    torch.testing.assert_close(got_var.double(), latents[:7].var(0, unbiased=False), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="No images"):
        compute_latent_stats(model, [])


def test_compute_latent_stats_uses_raw_noise_free_latents():
    """Stats are of raw latents: unaffected by noise (train mode) and by an already enabled normalization."""
    model = _tiny_rae(noise_tau=1.0)
    images = _images(6)
    reference = compute_latent_stats(model, [{"pixel_values": images}])
    model.set_latent_stats(torch.ones(32, 4, 4), torch.full((32, 4, 4), 4.0))
    model.train()
    again = compute_latent_stats(model, [{"pixel_values": images}])
    torch.testing.assert_close(again[0], reference[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(again[1], reference[1], atol=1e-6, rtol=0)


def test_running_moments_merge_of_halves_equals_whole():
    """Chan merge of two halves == moments of the whole set; update in pieces == update at once."""
    data = torch.randn(37, 5, 3, generator=torch.Generator().manual_seed(0)).double() * 3 + 1
    whole = RunningMoments()
    whole.update(data)
    first, second = RunningMoments(), RunningMoments()
    first.update(data[:20])
    for chunk in data[20:].split(6):
        second.update(chunk)
    first.merge(second.count, second.mean, second.m2)
    assert first.count == whole.count == 37
    torch.testing.assert_close(first.mean, data.mean(0), atol=1e-12, rtol=0)
    torch.testing.assert_close(first.variance, data.var(0, unbiased=False), atol=1e-12, rtol=0)
    torch.testing.assert_close(whole.variance, data.var(0, unbiased=False), atol=1e-12, rtol=0)
    empty = RunningMoments()
    empty.merge(0, torch.zeros(5, 3), torch.zeros(5, 3))
    assert empty.mean is None and empty.count == 0


def test_set_latent_stats_normalizes_and_is_invertible(tmp_path):
    """set_latent_stats turns normalization on; encode standardizes; decode(encode(x)) equals the raw model's output."""
    model = _tiny_rae()
    images = _images(3)
    raw = model.encode(images).latents
    raw_reconstruction = model(images).reconstruction
    generator = torch.Generator().manual_seed(7)
    mean = torch.randn(32, 4, 4, generator=generator)
    var = torch.rand(32, 4, 4, generator=generator) * 3 + 0.1
    assert model.config.normalize_latents is False
    model.set_latent_stats(mean, var)
    assert model.config.normalize_latents is True
    assert model.config.latent_norm_eps == 1e-5
    normalized = model.encode(images).latents
    torch.testing.assert_close(normalized, (raw - mean) / torch.sqrt(var + 1e-5), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.decode(normalized).reconstruction, raw_reconstruction, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(images).reconstruction, raw_reconstruction, atol=1e-5, rtol=1e-5)

    with pytest.raises(ValueError, match="shape"):
        model.set_latent_stats(mean, torch.ones(32, 16))
    with pytest.raises(ValueError, match="shape"):
        model.set_latent_stats(torch.zeros(16, 4, 4), var)

    model.save_pretrained(tmp_path / "rae")
    loaded = RAEModel.from_pretrained(tmp_path / "rae").eval()
    assert loaded.config.normalize_latents is True
    assert torch.equal(loaded.latents_mean, mean) and torch.equal(loaded.latents_var, var)
    assert torch.equal(loaded.encode(images).latents, normalized)

    model.set_latent_stats(None, var)  # variance-only statistics (released DINOv2-B): zero mean
    assert torch.equal(model.latents_mean, torch.zeros(32, 4, 4))
    torch.testing.assert_close(model.encode(images).latents, raw / torch.sqrt(var + 1e-5), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------- 7. save / load


def test_save_load_round_trip_bit_identical(tmp_path):
    """save_pretrained -> RAEModel/AutoModel.from_pretrained: same outputs bit for bit; hub-ready folder."""
    model = _tiny_rae(encoder_image_mean=[0.2, 0.3, 0.4], encoder_image_std=[0.6, 0.5, 0.4], noise_tau=0.5)
    images = _images(2, size=48)
    expected = model(images)
    model.save_pretrained(tmp_path / "rae")
    files = set(os.listdir(tmp_path / "rae"))
    assert {
        "model.safetensors",
        "config.json",
        "modeling_rae.py",
        "configuration_rae.py",
        "backbone_layouts.py",
    } <= files
    config = json.loads((tmp_path / "rae" / "config.json").read_text())
    assert config["auto_map"] == {"AutoConfig": "configuration_rae.RAEConfig", "AutoModel": "modeling_rae.RAEModel"}
    assert config["model_type"] == "rae" and config["encoder_config"]["model_type"] == "dinov2"
    keys = set(load_file(tmp_path / "rae" / "model.safetensors"))
    assert "latents_var" in keys and any(k.startswith("encoder.") for k in keys)
    assert "decoder.decoder_pos_embed" not in keys  # fixed buffer, recomputed

    for loader in (RAEModel, AutoModel):
        loaded = loader.from_pretrained(tmp_path / "rae").eval()
        assert isinstance(loaded, RAEModel)
        assert loaded.config.noise_tau == 0.5 and loaded.config.encoder_image_std == [0.6, 0.5, 0.4]
        assert not loaded.encoder.training
        out = loaded(images)
        assert torch.equal(out.latents, expected.latents)
        assert torch.equal(out.reconstruction, expected.reconstruction)


class TestRAEModel(ModelTesterMixin):
    """The shared model checks on a SigLIP RAE run off its native size (interpolated positions), with statistics."""

    model_class = RAEModel
    invalid_configs = (
        ({"decoder_num_attention_heads": 0}, "decoder_num_attention_heads"),
        ({"decoder_hidden_size": 36, "decoder_num_attention_heads": 5}, "decoder_hidden_size"),
        ({"decoder_num_hidden_layers": 0}, "decoder_num_hidden_layers"),
        ({"noise_tau": -0.1}, "noise_tau"),
        ({"encoder_input_size": 50}, "encoder_input_size"),
        ({"decoder_preset": "ViT-H"}, "decoder_preset"),
    )

    def get_config(self, **overrides) -> RAEConfig:
        factory, _, _, _ = ENCODERS["siglip"]
        return RAEConfig(encoder_config=factory(), **{**DECODER, "encoder_input_size": 48, **overrides})

    def get_inputs(self, seed: int = 0) -> dict[str, torch.Tensor]:
        return {"pixel_values": _images(2, size=40, seed=seed)}

    def make_model(self, seed: int = 0, **overrides) -> RAEModel:
        torch.manual_seed(seed)
        model = RAEModel(self.get_config(**overrides))
        _randomize_(model.encoder, seed + 1)
        generator = torch.Generator().manual_seed(seed + 2)
        mean, var = torch.randn(32, 6, 6, generator=generator), torch.rand(32, 6, 6, generator=generator) + 0.5
        model.set_latent_stats(mean, var)
        return model.eval()


# ------------------------------------------------------------------------------------------ 8. config checks


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"noise_distribution": "gaussian"}, "noise_distribution"),
        ({"noise_tau": -0.1}, "noise_tau"),
        ({"decoder_hidden_size": 36, "decoder_num_attention_heads": 5}, "divisible"),
        ({"decoder_preset": "ViT-H"}, "decoder_preset"),
        ({"encoder_input_size": 50}, "multiple of the encoder patch"),
        ({"encoder_input_size": 0}, "multiple of the encoder patch"),
        ({"encoder_image_mean": [0.5, 0.5]}, "encoder_image_mean"),
        ({"encoder_image_std": [0.5, 0.5, 0.5, 0.5]}, "encoder_image_std"),
        ({"encoder_image_std": [0.5, 0.0, 0.5]}, "positive"),
        ({"decoder_patch_size": 0}, "decoder_patch_size"),
        ({"latent_norm_eps": 0.0}, "latent_norm_eps"),
    ],
)
def test_config_validation_errors(kwargs, match):
    """Bad settings raise a ValueError naming the problem."""
    base = {**DECODER, "encoder_config": Dinov2Config(patch_size=14, **TINY), "encoder_input_size": 56}
    with pytest.raises(ValueError, match=match):
        RAEConfig(**{**base, **kwargs})


PRESET_SIZES = {
    "ViT-S": (384, 12, 6, 1536),
    "ViT-B": (768, 12, 12, 3072),
    "ViT-L": (1024, 24, 16, 4096),
    "ViT-XL": (1152, 28, 16, 4096),
}


def _decoder_sizes(config: RAEConfig) -> tuple[int, int, int, int]:
    return (
        config.decoder_hidden_size,
        config.decoder_num_hidden_layers,
        config.decoder_num_attention_heads,
        config.decoder_intermediate_size,
    )


@pytest.mark.parametrize("preset", sorted(DECODER_PRESETS))
def test_decoder_presets_set_sizes(preset):
    """A preset alone sets the four decoder size fields (ViT-XL = 1152/28/16/4096)."""
    config = RAEConfig(encoder_config=Dinov2Config(patch_size=14), decoder_preset=preset)
    assert _decoder_sizes(config) == PRESET_SIZES[preset]


def test_explicit_decoder_sizes_win_over_the_preset(tmp_path):
    """Issue: `RAEConfig(decoder_preset="ViT-B", decoder_hidden_size=384)` gave 768. Explicit arguments win; the
    preset fills only the rest; the resolved sizes survive save/load; no preset and no sizes = ViT-XL."""
    config = RAEConfig(encoder_config=Dinov2Config(patch_size=14), decoder_preset="ViT-B", decoder_hidden_size=384)
    assert _decoder_sizes(config) == (384, 12, 12, 3072)
    config.save_pretrained(tmp_path)
    again = RAEConfig.from_pretrained(tmp_path)
    assert _decoder_sizes(again) == (384, 12, 12, 3072) and again.decoder_preset == "ViT-B"
    assert _decoder_sizes(RAEConfig(encoder_config=Dinov2Config(patch_size=14))) == PRESET_SIZES["ViT-XL"]
    # explicit values equal to the class defaults survive a round trip too
    xl_width = RAEConfig(decoder_preset="ViT-B", decoder_hidden_size=1152, decoder_num_attention_heads=16)
    xl_width.save_pretrained(tmp_path / "xl_width")
    assert _decoder_sizes(RAEConfig.from_pretrained(tmp_path / "xl_width")) == (1152, 12, 16, 3072)
    custom = RAEConfig(
        encoder_config=Dinov2Config(patch_size=14), decoder_hidden_size=64, decoder_num_attention_heads=4
    )
    assert _decoder_sizes(custom) == (64, 28, 4, 4096)


def test_config_defaults_and_dict_round_trip():
    """Defaults follow the paper (tau 0.8 uniform, ImageNet stats); to_dict/from_dict rebuilds the encoder config."""
    config = RAEConfig(encoder_config={"model_type": "dinov2", "patch_size": 14, **TINY}, encoder_input_size=56)
    assert config.encoder_config.model_type == "dinov2" and config.encoder_patch_size == 14
    assert config.noise_tau == 0.8 and config.noise_distribution == "uniform"
    assert config.encoder_image_mean == pytest.approx(IMAGENET_MEAN.tolist())
    assert config.normalize_latents is False
    again = RAEConfig.from_dict(config.to_dict())
    assert type(again.encoder_config) is type(config.encoder_config)
    assert again.encoder_config.hidden_size == 32 and again.latent_grid_size == 4
    default = RAEConfig()
    assert default.encoder_config.model_type == "dinov2_with_registers"
    assert default.encoder_input_size == 224 and default.latent_grid_size == 224 // default.encoder_patch_size


# ----------------------------------------------------------------------------------- 9. gradient checkpointing


def test_gradient_checkpointing_same_outputs_and_grads(monkeypatch):
    """Checkpointed decoder layers give the same reconstruction and decoder gradients (train mode, tau 0)."""
    plain = _tiny_rae(noise_tau=0.0).train()
    checkpointed = copy.deepcopy(plain)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        checkpointed.gradient_checkpointing_enable()
    assert checkpointed.decoder.gradient_checkpointing and not plain.decoder.gradient_checkpointing
    calls = []
    original = torch.utils.checkpoint.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting)
    images = _images(2)
    outputs = []
    for model in (plain, checkpointed):
        reconstruction = model(images).reconstruction
        (reconstruction - images.mean()).square().mean().backward()
        outputs.append((reconstruction.detach(), {n: p.grad.clone() for n, p in model.decoder.named_parameters()}))
    assert len(calls) == 2  # one per decoder layer, only for the checkpointed model
    torch.testing.assert_close(outputs[0][0], outputs[1][0], atol=1e-6, rtol=0)
    assert outputs[0][1].keys() == outputs[1][1].keys()
    for name, grad in outputs[0][1].items():
        assert grad.abs().sum() > 0 or name == "trainable_cls_token"
        torch.testing.assert_close(outputs[1][1][name], grad, atol=1e-6, rtol=0, msg=name)


# ------------------------------------------------------------------------------------------- 10. attention


def test_sdpa_attention_and_layer_match_naive_computation():
    """Decoder self-attention == softmax(QK^T/sqrt(d))V per head; the layer is x + Attn(LN x), then + MLP(LN x)."""
    model = _tiny_rae(decoder_num_attention_heads=4)
    layer = model.decoder.decoder_layers[0]
    _randomize_(layer, 11)
    hidden = torch.randn(2, 17, 32, generator=torch.Generator().manual_seed(3))
    attention = layer.attention.attention
    heads, dim = 4, 8

    def split(x):
        return x.view(2, 17, heads, dim).transpose(1, 2)

    with torch.no_grad():
        q, k, v = split(attention.query(hidden)), split(attention.key(hidden)), split(attention.value(hidden))
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dim), dim=-1)
        naive = (weights @ v).transpose(1, 2).reshape(2, 17, 32)
        torch.testing.assert_close(attention(hidden), naive, atol=1e-5, rtol=1e-5)

        def naive_attention(x):
            qq, kk, vv = split(attention.query(x)), split(attention.key(x)), split(attention.value(x))
            ctx = (torch.softmax(qq @ kk.transpose(-1, -2) / math.sqrt(dim), dim=-1) @ vv).transpose(1, 2)
            return layer.attention.output["dense"](ctx.reshape(2, 17, 32))

        x = hidden + naive_attention(layer.layernorm_before(hidden))
        mlp = layer.output["dense"](F.gelu(layer.intermediate["dense"](layer.layernorm_after(x))))
        torch.testing.assert_close(layer(hidden), x + mlp, atol=1e-5, rtol=1e-5)
