"""Interoperability with diffusers' AutoencoderRAE and the official RAE checkpoints (tiny models, CPU, no network)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import contextlib
import functools
import logging
import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import Dinov2Config, Dinov2WithRegistersConfig, Dinov2WithRegistersModel, SiglipVisionModel

from rae_hf.convert import (
    decoder_key_from_diffusers,
    decoder_key_to_diffusers,
    diffusers_encoder_config,
    main,
    rae_from_diffusers,
    rae_from_official,
    rae_to_diffusers,
    save_diffusers,
)
from rae_hf.models.rae import RAEConfig, RAEModel
from rae_hf.models.rae.modeling_rae import sincos_position_embedding_2d

diffusers = pytest.importorskip("diffusers")
from diffusers import AutoencoderRAE  # noqa: E402
from diffusers.models.autoencoders import autoencoder_rae as diffusers_rae  # noqa: E402

# Every encoder on a 16x16 token grid (the only grid where diffusers' decoder position embedding is the official one).
ENCODERS = {"dinov2": (14, 224), "siglip2": (16, 256), "mae": (16, 256)}
ENCODER_HIDDEN = 64
DECODER = dict(
    decoder_hidden_size=32, decoder_num_hidden_layers=2, decoder_num_attention_heads=4, decoder_intermediate_size=64
)
TOLERANCE = 1e-5


class _FlatSiglipVisionModel(SiglipVisionModel):
    """transformers 5 flattened SiglipVisionModel; diffusers 0.42 still reaches for `.vision_model`."""

    @property
    def vision_model(self):
        return self


@contextlib.contextmanager
def siglip_compat():
    """Let this diffusers build its siglip2 encoder with transformers >= 5 (its own code, untouched otherwise)."""
    with pytest.MonkeyPatch.context() as patch:
        if not hasattr(SiglipVisionModel, "vision_model"):
            patch.setattr(diffusers_rae, "SiglipVisionModel", _FlatSiglipVisionModel)
        yield


@torch.no_grad()
def perturb(module: torch.nn.Module, seed: int, scale: float = 0.1) -> None:
    """Make every parameter distinctive (LayerNorm scales, biases and CLS tokens are 1/0 after init)."""
    generator = torch.Generator().manual_seed(seed)
    for parameter in module.parameters():
        parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)


def random_stats(channels: int = ENCODER_HIDDEN, grid: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    mean = 0.5 * torch.randn(channels, grid, grid, generator=generator)
    spread = 0.5 + torch.rand(channels, grid, grid, generator=generator)  # a std (diffusers) or a var (ours)
    return mean, spread


def tiny_vae(encoder_type: str, seed: int = 0, stats: bool = True, **kwargs) -> AutoencoderRAE:
    patch, size = ENCODERS[encoder_type]
    if stats:
        kwargs["latents_mean"], kwargs["latents_std"] = random_stats(seed=seed)
    torch.manual_seed(seed)
    with siglip_compat():
        vae = AutoencoderRAE(
            encoder_type=encoder_type,
            encoder_hidden_size=ENCODER_HIDDEN,
            encoder_patch_size=patch,
            encoder_num_hidden_layers=2,
            patch_size=2,
            encoder_input_size=size,
            **DECODER,
            **kwargs,
        )
    perturb(vae, seed)
    return vae.eval()


@functools.cache
def shared_vae(encoder_type: str) -> AutoencoderRAE:
    """One tiny diffusers model (with statistics) per encoder type, shared by tests that only read it."""
    return tiny_vae(encoder_type)


@functools.cache
def shared_converted(encoder_type: str) -> RAEModel:
    return rae_from_diffusers(shared_vae(encoder_type))


def tiny_rae(encoder_type: str, seed: int = 0, stats: bool = True, **overrides) -> RAEModel:
    """Our model with an encoder diffusers can represent (built as diffusers would build it)."""
    patch, size = ENCODERS[encoder_type]
    encoder = diffusers_encoder_config(
        {
            "encoder_type": encoder_type,
            "encoder_hidden_size": ENCODER_HIDDEN,
            "encoder_patch_size": patch,
            "encoder_num_hidden_layers": 2,
        }
    )
    torch.manual_seed(seed)
    kwargs = dict(encoder_config=encoder, encoder_input_size=size, decoder_patch_size=2, noise_tau=0.5, **DECODER)
    model = RAEModel(RAEConfig(**{**kwargs, **overrides}))
    perturb(model, seed)
    if stats:
        model.set_latent_stats(*random_stats(seed=seed))
    return model.eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(0))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@torch.no_grad()
def assert_same_outputs(vae: AutoencoderRAE, model: RAEModel, images: torch.Tensor) -> tuple[float, float]:
    """Encode with both, decode diffusers' latents with both; both differences within TOLERANCE."""
    theirs = vae.encode(images).latent
    ours = model.encode(images).latents
    encode = max_diff(theirs, ours)
    decode = max_diff(vae.decode(theirs).sample, model.decode(theirs).reconstruction)
    assert encode <= TOLERANCE, f"encode differs by {encode}"
    assert decode <= TOLERANCE, f"decode differs by {decode}"
    return encode, decode


def state_differences(first: dict, second: dict, skip: tuple[str, ...] = ()) -> dict[str, float]:
    assert set(first) == set(second)
    return {
        k: max_diff(first[k], second[k])
        for k in first
        if not k.startswith(skip) and not torch.equal(first[k], second[k])
    }


# ----------------------------------------------------------------------------------------------------------------------
# diffusers <-> ours
# ----------------------------------------------------------------------------------------------------------------------
def test_decoder_key_mapping():
    pairs = {
        "decoder_layers.3.attention.attention.query.weight": "decoder_layers.3.attention.to_q.weight",
        "decoder_layers.3.attention.attention.key.bias": "decoder_layers.3.attention.to_k.bias",
        "decoder_layers.0.attention.attention.value.weight": "decoder_layers.0.attention.to_v.weight",
        "decoder_layers.11.attention.output.dense.bias": "decoder_layers.11.attention.to_out.0.bias",
        "decoder_layers.1.output.dense.weight": "decoder_layers.1.output.dense.weight",
        "decoder_layers.1.intermediate.dense.weight": "decoder_layers.1.intermediate.dense.weight",
        "trainable_cls_token": "trainable_cls_token",
    }
    for ours, theirs in pairs.items():
        assert decoder_key_to_diffusers(ours) == theirs
        assert decoder_key_from_diffusers(theirs) == ours


@pytest.mark.parametrize("encoder_type", list(ENCODERS))
def test_diffusers_encoder_config_is_what_diffusers_builds(encoder_type):
    vae = shared_vae(encoder_type)
    ours = diffusers_encoder_config(dict(vae.config)).to_dict()
    theirs = vae.encoder.config.to_dict()
    ignored = {"transformers_version", "_name_or_path"}
    assert {k: v for k, v in ours.items() if k not in ignored} == {k: v for k, v in theirs.items() if k not in ignored}


@pytest.mark.parametrize("encoder_type", list(ENCODERS))
def test_from_diffusers_matches_outputs(encoder_type, images):
    vae, model = shared_vae(encoder_type), shared_converted(encoder_type)
    assert not model.training and model.config.normalize_latents
    assert (
        model.config.encoder_config.model_type
        == {"dinov2": "dinov2_with_registers", "siglip2": "siglip_vision_model", "mae": "vit_mae"}[encoder_type]
    )
    assert_same_outputs(vae, model, images)
    # the diffusers -> ours mapping keeps diffusers' epsilon: sqrt(var + 1e-5) == std + 1e-5
    divisor = torch.sqrt(model.latents_var.double() + 1e-5)
    torch.testing.assert_close(divisor, vae._latents_std.double() + 1e-5, rtol=1e-7, atol=0)
    # raw encoder tokens are identical up to float rounding (same HF encoder, same weights)
    with torch.no_grad():
        tokens = model.encode_tokens(images)
        pixels = vae._resize_and_normalize(images)
        reference = (
            diffusers_rae._ENCODER_FORWARD_FNS[encoder_type](vae.encoder, pixels, 16)
            if encoder_type == "mae"
            else diffusers_rae._ENCODER_FORWARD_FNS[encoder_type](vae.encoder, pixels)
        )
    assert max_diff(tokens, reference) <= 1e-6


@pytest.mark.parametrize("encoder_type", list(ENCODERS))
def test_to_diffusers_matches_outputs(encoder_type, images):
    model = tiny_rae(encoder_type)
    with siglip_compat():
        vae = rae_to_diffusers(model)
    assert vae.config.encoder_type == encoder_type and vae.config.noise_tau == 0.5
    assert_same_outputs(vae, model, images)


@pytest.mark.parametrize("encoder_type", list(ENCODERS))
def test_round_trip_diffusers_ours_diffusers(encoder_type):
    vae = shared_vae(encoder_type)
    with siglip_compat():
        again = rae_to_diffusers(shared_converted(encoder_type))
    # SigLIP: our RAE drops the unused pooling head; it comes back as zeros.
    skip = ("encoder.head.",) if encoder_type == "siglip2" else ()
    differences = state_differences(vae.state_dict(), again.state_dict(), skip)
    assert set(differences) <= {"_latents_std"}, differences  # everything else bit-identical
    assert differences.get("_latents_std", 0.0) <= 2e-7  # float32 storage of var: about one ulp
    for key in (
        "encoder_type",
        "encoder_hidden_size",
        "encoder_patch_size",
        "decoder_hidden_size",
        "patch_size",
        "encoder_input_size",
        "noise_tau",
        "scaling_factor",
        "encoder_norm_mean",
        "encoder_norm_std",
    ):
        assert again.config[key] == vae.config[key], key


def test_round_trip_ours_diffusers_ours(images):
    model = tiny_rae("dinov2")
    again = rae_from_diffusers(rae_to_diffusers(model))
    differences = state_differences(model.state_dict(), again.state_dict())
    assert set(differences) <= {"latents_var"}, differences
    assert differences.get("latents_var", 0.0) <= 4e-7
    assert again.config.normalize_latents
    with torch.no_grad():
        assert max_diff(model(images).reconstruction, again(images).reconstruction) <= TOLERANCE


def test_default_diffusers_model_without_statistics(images):
    vae = tiny_vae("dinov2", stats=False)  # diffusers still divides by (1 + 1e-5)
    model = rae_from_diffusers(vae)
    assert model.config.normalize_latents
    assert_same_outputs(vae, model, images)
    again = rae_to_diffusers(model)
    assert again.config.latents_mean is None and again.config.latents_std is None
    assert not state_differences(vae.state_dict(), again.state_dict())

    official = rae_from_diffusers(vae, latent_stats_convention="official")
    assert not official.config.normalize_latents  # identity: no statistics at all
    with torch.no_grad():
        ratio = vae.encode(images).latent / official.encode(images).latents
    torch.testing.assert_close(ratio, torch.full_like(ratio, 1 / (1 + 1e-5)), rtol=1e-6, atol=1e-6)


def test_ours_without_statistics_to_diffusers(images):
    model = tiny_rae("dinov2", stats=False)
    vae = rae_to_diffusers(model)
    assert vae.config.latents_std == [pytest.approx(1 - 1e-5)]  # so that diffusers' std + 1e-5 is exactly 1
    assert_same_outputs(vae, model, images)
    assert not rae_from_diffusers(vae).config.normalize_latents
    assert rae_to_diffusers(model, latent_stats_convention="official").config.latents_std is None


def test_scaling_factor_is_folded_into_the_statistics(images):
    vae = tiny_vae("mae", scaling_factor=0.7)
    model = rae_from_diffusers(vae)
    assert_same_outputs(vae, model, images)
    back = rae_to_diffusers(model, scaling_factor=0.3)
    assert back.config.scaling_factor == 0.3
    assert_same_outputs(back, model, images)


def test_official_convention_recovers_the_official_variance():
    mean, var = random_stats(seed=3)
    vae = tiny_vae("dinov2", stats=False, latents_mean=mean, latents_std=torch.sqrt(var + 1e-5))  # diffusers' converter
    model = rae_from_diffusers(vae, latent_stats_convention="official")
    torch.testing.assert_close(model.latents_var, var, rtol=2e-6, atol=1e-7)
    torch.testing.assert_close(model.latents_mean, mean)
    back = rae_to_diffusers(model, latent_stats_convention="official")
    torch.testing.assert_close(back._latents_std, vae._latents_std, rtol=1e-6, atol=0)


@pytest.mark.parametrize("encoder_type", ["dinov2", "siglip2"])
def test_from_diffusers_folder(encoder_type, tmp_path, images):
    vae = shared_vae(encoder_type)
    vae.save_pretrained(tmp_path)
    if encoder_type == "siglip2":  # released checkpoints were saved under transformers 4: encoder.vision_model.*
        path = tmp_path / "diffusion_pytorch_model.safetensors"
        state = load_file(path)
        state = {
            k.replace("encoder.", "encoder.vision_model.", 1) if k.startswith("encoder.") else k: v
            for k, v in state.items()
        }
        save_file(state, path)
    from_folder = rae_from_diffusers(str(tmp_path))
    from_instance = shared_converted(encoder_type)
    assert not state_differences(from_folder.state_dict(), from_instance.state_dict())
    assert_same_outputs(vae, from_folder, images)


def test_position_embedding_warning_off_the_16x16_grid(caplog):
    with caplog.at_level(logging.WARNING, logger="rae_hf.convert"):
        vae = AutoencoderRAE(
            encoder_type="dinov2",
            encoder_hidden_size=64,
            encoder_patch_size=14,
            encoder_num_hidden_layers=1,
            patch_size=2,
            encoder_input_size=56,
            **DECODER,
        )
        model = rae_from_diffusers(vae)
    assert "position embedding" in caplog.text
    # diffusers scales positions by 16 / grid; ours keeps the official integer positions
    assert max_diff(model.decoder.decoder_pos_embed, vae.decoder.decoder_pos_embed) > 0.1


def test_to_diffusers_rejects_what_diffusers_cannot_hold():
    with pytest.raises(ValueError, match="dinov2"):  # DINOv2 without registers: diffusers drops 5 tokens
        config = RAEConfig(
            encoder_config=Dinov2Config(
                hidden_size=64, num_attention_heads=1, num_hidden_layers=1, patch_size=14, image_size=56
            ),
            encoder_input_size=56,
            **DECODER,
        )
        rae_to_diffusers(RAEModel(config))
    with pytest.raises(ValueError, match="decoder_hidden_act"):
        rae_to_diffusers(tiny_rae("dinov2", stats=False, decoder_hidden_act="relu"))
    encoder = Dinov2WithRegistersConfig(
        hidden_size=64, num_attention_heads=2, num_hidden_layers=2, patch_size=14, image_size=518
    )
    with pytest.raises(ValueError, match="num_attention_heads"):  # diffusers uses head dim 64
        rae_to_diffusers(RAEModel(RAEConfig(encoder_config=encoder, encoder_input_size=224, **DECODER)))


@pytest.mark.skipif(hasattr(SiglipVisionModel, "vision_model"), reason="this diffusers builds siglip2 fine")
def test_siglip_to_diffusers_explains_the_incompatibility():
    with pytest.raises(RuntimeError, match="siglip2"):
        rae_to_diffusers(tiny_rae("siglip2", stats=False))


def test_corrupted_diffusers_checkpoint_lists_keys(tmp_path):
    vae = tiny_vae("dinov2", stats=False)
    vae.save_pretrained(tmp_path)
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    state = load_file(path)
    state["decoder.decoder_layers.0.attention.to_x.weight"] = state.pop(
        "decoder.decoder_layers.0.attention.to_q.weight"
    )
    save_file(state, path)
    with pytest.raises(ValueError) as error:
        rae_from_diffusers(str(tmp_path))
    assert "attention.to_x.weight" in str(error.value) and "attention.attention.query.weight" in str(error.value)


# ----------------------------------------------------------------------------------------------------------------------
# official checkpoints
# ----------------------------------------------------------------------------------------------------------------------
OFFICIAL_GRID = 8  # 112 px at patch 14


@pytest.fixture(scope="module")
def official_files(tmp_path_factory):
    """A tiny encoder folder, an RAE around it, and its decoder/statistics in the official file layouts."""
    root = tmp_path_factory.mktemp("official")
    torch.manual_seed(0)
    encoder = Dinov2WithRegistersConfig(
        hidden_size=32, num_attention_heads=2, num_hidden_layers=2, patch_size=14, intermediate_size=64, image_size=518
    )
    Dinov2WithRegistersModel(encoder).save_pretrained(root / "encoder")
    model = RAEModel.from_encoder_pretrained(
        str(root / "encoder"), encoder_input_size=OFFICIAL_GRID * 14, decoder_patch_size=4, **DECODER
    )
    perturb(model.decoder, 1)
    mean, var = random_stats(channels=32, grid=OFFICIAL_GRID, seed=1)
    model.set_latent_stats(mean, var)
    model.eval()
    decoder = dict(model.decoder.state_dict())
    position = sincos_position_embedding_2d(32, OFFICIAL_GRID)
    files = {"root": root, "model": model, "decoder": decoder, "position": position}
    # the released layout: a plain decoder state dict with the (fixed) position embedding as a parameter
    torch.save({**decoder, "decoder_pos_embed": position}, root / "model.pt")
    # stat.pt as released for DINOv2-B (var only) and with a mean, shaped [1, C, h, w] like a BatchNorm buffer
    torch.save({"var": var.unsqueeze(0)}, root / "stat_var.pt")
    torch.save({"mean": mean.unsqueeze(0), "var": var.unsqueeze(0)}, root / "stat.pt")
    # a training checkpoint: whole-RAE EMA under "ema" with DDP prefixes, plus optimizer junk
    ema = {f"module.decoder.{k}": v for k, v in decoder.items()}
    ema.update({f"module.encoder.{k}": v for k, v in model.encoder.state_dict().items()})
    torch.save({"ema": ema, "model": {"decoder.foo": torch.zeros(1)}, "epoch": torch.tensor(3)}, root / "train.pt")
    return files


def test_from_official_reproduces_outputs(official_files, images):
    root, model = official_files["root"], official_files["model"]
    loaded = rae_from_official(
        str(root / "model.pt"), str(root / "stat.pt"), str(root / "encoder"), decoder_num_attention_heads=4
    )
    assert loaded.config.encoder_input_size == OFFICIAL_GRID * 14  # from the position embedding
    assert loaded.config.decoder_patch_size == 4 and loaded.config.decoder_num_hidden_layers == 2
    assert not state_differences(loaded.state_dict(), model.state_dict())
    with torch.no_grad():
        assert max_diff(loaded(images).reconstruction, model(images).reconstruction) == 0.0


def test_from_official_training_checkpoint_and_var_only_stats(official_files, images):
    root, model = official_files["root"], official_files["model"]
    loaded = rae_from_official(
        str(root / "train.pt"),
        str(root / "stat_var.pt"),
        str(root / "encoder"),
        decoder_num_attention_heads=4,
        noise_tau=0.3,
    )
    assert loaded.config.noise_tau == 0.3 and loaded.config.normalize_latents
    assert torch.equal(loaded.latents_mean, torch.zeros_like(loaded.latents_mean))
    assert not state_differences(loaded.decoder.state_dict(), model.decoder.state_dict())
    torch.testing.assert_close(loaded.latents_var, model.latents_var, rtol=0, atol=0)


def test_from_official_errors(official_files, tmp_path):
    root, decoder, position = official_files["root"], official_files["decoder"], official_files["position"]
    encoder = str(root / "encoder")

    def attempt(state, **kwargs):
        path = tmp_path / "bad.pt"
        torch.save(state, path)
        return rae_from_official(str(path), None, encoder, **kwargs)

    extra = {
        **decoder,
        "decoder_pos_embed": position,
        "decoder_layers.0.attention.attention.extra.weight": torch.ones(2),
    }
    with pytest.raises(ValueError, match=r"unexpected keys .*attention\.attention\.extra\.weight"):
        attempt(extra, decoder_num_attention_heads=4)
    missing = {k: v for k, v in decoder.items() if k != "decoder_norm.bias"}
    with pytest.raises(ValueError, match=r"missing keys .*decoder_norm\.bias"):
        attempt(missing, encoder_input_size=OFFICIAL_GRID * 14, decoder_num_attention_heads=4)
    with pytest.raises(ValueError, match="sin-cos embedding"):
        attempt({**decoder, "decoder_pos_embed": position * 2}, decoder_num_attention_heads=4)
    with pytest.raises(ValueError, match="decoder_num_attention_heads"):
        attempt({**decoder, "decoder_pos_embed": position})  # width 32 matches no preset: heads must be given
    with pytest.raises(ValueError, match="neither a state dict"):
        attempt({"epoch": 3, "optimizer": {"lr": 0.1}}, decoder_num_attention_heads=4)
    with pytest.raises(ValueError, match="does not match the requested config"):
        attempt({**decoder, "decoder_pos_embed": position}, decoder_num_attention_heads=4, decoder_hidden_size=64)


# ----------------------------------------------------------------------------------------------------------------------
# CLI and model entry points
# ----------------------------------------------------------------------------------------------------------------------
def test_cli_round_trip(tmp_path, official_files, images, capsys):
    vae = shared_vae("dinov2")
    vae.save_pretrained(tmp_path / "diffusers")
    main(["from-diffusers", str(tmp_path / "diffusers"), str(tmp_path / "ours")])
    ours = RAEModel.from_pretrained(tmp_path / "ours").eval()
    assert_same_outputs(vae, ours, images)
    main(["to-diffusers", str(tmp_path / "ours"), str(tmp_path / "back")])
    back = AutoencoderRAE.from_pretrained(tmp_path / "back").eval()
    assert_same_outputs(back, ours, images)

    root = official_files["root"]
    main(
        [
            "from-official",
            str(tmp_path / "official"),
            "--decoder",
            str(root / "model.pt"),
            "--stats",
            str(root / "stat.pt"),
            "--encoder",
            str(root / "encoder"),
            "--decoder_num_attention_heads",
            "4",
        ]
    )
    official = RAEModel.from_pretrained(tmp_path / "official").eval()
    with torch.no_grad():
        reference = official_files["model"](images).reconstruction
        assert max_diff(official(images).reconstruction, reference) == 0.0
    assert "Wrote" in capsys.readouterr().out


def test_save_diffusers(tmp_path, images):
    model = tiny_rae("mae")
    save_diffusers(model, tmp_path)
    vae = AutoencoderRAE.from_pretrained(tmp_path).eval()
    assert_same_outputs(vae, model, images)


def test_model_class_has_no_attached_converters():
    """Layering: the model class never gains `rae_hf.convert` methods by being imported (the converters are the
    documented functions `rae_from_diffusers` / `save_diffusers`)."""
    assert not hasattr(RAEModel, "from_diffusers") and not hasattr(RAEModel, "save_diffusers")


def test_epsilon_mismatch_size():
    """The documented diffusers-vs-official gap: a relative 1e-5 / sqrt(var + 1e-5) on the normalized latents."""
    var = torch.tensor([1.0, 0.01], dtype=torch.float64)
    official = torch.sqrt(var + 1e-5)
    diffusers_divisor = official + 1e-5
    relative = (diffusers_divisor / official - 1).tolist()
    assert relative == pytest.approx([1e-5 / math.sqrt(1 + 1e-5), 1e-5 / math.sqrt(0.01 + 1e-5)], rel=1e-3)
