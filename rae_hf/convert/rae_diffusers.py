"""Conversion between `RAEModel` and diffusers' `AutoencoderRAE` (both directions).

    python -m rae_hf.convert from-diffusers nyu-visionx/RAE-dinov2-wReg-base-ViTXL-n08 runs/rae-dinov2-b
    python -m rae_hf.convert to-diffusers runs/rae-dinov2-b runs/rae-dinov2-b-diffusers

Both write a `save_pretrained` folder (ours, or diffusers' for `to-diffusers`).

Key and configuration mapping, and the latent-statistics conventions: `rae_hf.convert._diffusers_mapping`.

Other known differences
-----------------------
* diffusers' decoder position embedding scales positions by `16 / grid` (its `base_size=16`); ours and the official
  one use integer positions. Identical for the 16x16 token grid of every released model; for other grids the decoders
  compute different functions (a warning is logged).
* diffusers 0.42 cannot build its `siglip2` encoder with transformers >= 5 (`SiglipVisionModel` lost its
  `.vision_model`); reading such checkpoints here works (files are read directly), writing raises a clear error.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import logging
import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from transformers import PreTrainedConfig
from transformers.utils.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ..models.checkpoint_io import format_keys, load_exact, read_weights_from
from ..models.rae import RAEConfig, RAEModel
from ._diffusers_mapping import (
    ARCHITECTURE_FIELDS,
    DIFFUSERS_DECODER_LAYER_NORM_EPS,
    DIFFUSERS_HEAD_DIM,
    DIFFUSERS_POS_EMBED_BASE_GRID,
    ENCODER_TYPE_TO_MODEL_TYPE,
    LATENT_STATS_CONVENTIONS,
    MODEL_TYPE_TO_ENCODER_TYPE,
    check_convention,
    compact,
    decoder_key_from_diffusers,
    decoder_key_to_diffusers,
    diffusers_encoder_config,
    diffusers_stats_to_rae,
    load_encoder,
    rae_stats_to_diffusers,
)

if TYPE_CHECKING:
    from diffusers import AutoencoderRAE

__all__ = ["main", "rae_from_diffusers", "rae_to_diffusers", "save_diffusers"]

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------------------
# diffusers -> ours
# ----------------------------------------------------------------------------------------------------------------------
def _diffusers_defaults() -> dict[str, Any]:
    from diffusers import AutoencoderRAE

    parameters = inspect.signature(AutoencoderRAE.__init__).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


def _load_diffusers_state(source: str, subfolder: str | None) -> dict[str, torch.Tensor]:
    """Weights of a diffusers folder / hub repo (single file or sharded; safetensors preferred)."""
    candidates = [
        ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json"),
        ("diffusion_pytorch_model.bin", "diffusion_pytorch_model.bin.index.json"),
    ]
    return read_weights_from(source, candidates, subfolder)


def _read_diffusers(source, subfolder: str | None) -> tuple[dict, dict[str, torch.Tensor], PreTrainedConfig]:
    """(config with defaults filled in, full state dict, HF encoder config) of an instance, folder or hub id.

    Folders and hub ids are read directly (config.json + weights) rather than through `AutoencoderRAE.from_pretrained`:
    no second full model is built, and checkpoints whose encoder diffusers cannot build (SigLIP with transformers >= 5)
    still convert. The encoder config is then the one diffusers would build (`diffusers_encoder_config`).
    """
    from diffusers import AutoencoderRAE

    defaults = _diffusers_defaults()
    if isinstance(source, AutoencoderRAE):
        return {**defaults, **dict(source.config)}, source.state_dict(), copy.deepcopy(source.encoder.config)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"Expected an AutoencoderRAE, a folder or a hub id, got {type(source).__name__}.")
    source = os.fspath(source)
    config = AutoencoderRAE.load_config(source, subfolder=subfolder)
    if config.get("_class_name", "AutoencoderRAE") != "AutoencoderRAE":
        raise ValueError(f"{source} holds a diffusers {config['_class_name']}, not an AutoencoderRAE.")
    config = {**defaults, **config}
    return config, _load_diffusers_state(source, subfolder), diffusers_encoder_config(config)


def _as_tensor(value) -> torch.Tensor:
    return value.detach().cpu() if isinstance(value, torch.Tensor) else torch.tensor(value, dtype=torch.float32)


def _to_chw(value: torch.Tensor, channels: int, grid: int, reshape_to_2d: bool, name: str) -> torch.Tensor:
    """Broadcast a diffusers latent statistic to our `[C, h, w]` layout."""
    try:
        if reshape_to_2d:  # diffusers latents are [B, C, h, w]
            return torch.broadcast_to(value, (1, channels, grid, grid))[0].clone()
        tokens = torch.broadcast_to(value, (1, grid * grid, channels))[0]  # diffusers latents are [B, N, C]
        return tokens.transpose(0, 1).reshape(channels, grid, grid).clone()
    except RuntimeError as error:
        raise ValueError(
            f"diffusers {name} of shape {tuple(value.shape)} does not broadcast to latents of {channels} channels on a "
            f"{grid}x{grid} grid."
        ) from error


def rae_from_diffusers(
    source: AutoencoderRAE | str | os.PathLike,
    *,
    subfolder: str | None = None,
    latent_stats_convention: str = "diffusers",
    model_class: type[RAEModel] | None = None,
) -> RAEModel:
    """Build our `RAEModel` (eval mode) from a diffusers `AutoencoderRAE` instance, local folder or hub id.

    With the default `latent_stats_convention="diffusers"`, `encode`/`decode` reproduce diffusers' outputs (eval mode);
    `"official"` recovers the official RAE statistics instead (module docstring).
    """
    check_convention(latent_stats_convention)
    config, state, encoder_config = _read_diffusers(source, subfolder)
    encoder_type = config["encoder_type"]
    if ENCODER_TYPE_TO_MODEL_TYPE.get(encoder_type) != encoder_config.model_type:
        raise ValueError(f"encoder_type={encoder_type!r} with an encoder of type {encoder_config.model_type!r}.")
    if int(config["num_channels"]) != 3:
        raise ValueError(f"num_channels={config['num_channels']}: diffusers' AutoencoderRAE only works with 3.")

    def image_stat(buffer: str, key: str, default: Sequence[float]) -> list[float]:
        """The config values (exact decimals) unless the weights' buffer says otherwise."""
        values = [float(v) for v in (config.get(key) or default)]
        if buffer in state:
            stored = state[buffer].detach().cpu().float().flatten()
            if not torch.equal(stored, torch.tensor(values, dtype=torch.float32)):
                values = [float(v) for v in stored]
        return values

    rae_config = RAEConfig(
        encoder_config=copy.deepcopy(encoder_config),
        encoder_input_size=int(config["encoder_input_size"]),
        encoder_image_mean=image_stat("encoder_mean", "encoder_norm_mean", IMAGENET_DEFAULT_MEAN),
        encoder_image_std=image_stat("encoder_std", "encoder_norm_std", IMAGENET_DEFAULT_STD),
        decoder_hidden_size=int(config["decoder_hidden_size"]),
        decoder_num_hidden_layers=int(config["decoder_num_hidden_layers"]),
        decoder_num_attention_heads=int(config["decoder_num_attention_heads"]),
        decoder_intermediate_size=int(config["decoder_intermediate_size"]),
        decoder_hidden_act="gelu",
        decoder_layer_norm_eps=DIFFUSERS_DECODER_LAYER_NORM_EPS,
        decoder_patch_size=int(config["patch_size"]),
        num_channels=3,
        noise_tau=float(config["noise_tau"]),
        noise_distribution="uniform",
    )
    if int(config["encoder_hidden_size"]) != rae_config.latent_channels:
        raise ValueError(
            f"encoder_hidden_size={config['encoder_hidden_size']} but the encoder has {rae_config.latent_channels}."
        )
    _warn_position_embedding(rae_config.latent_grid_size)
    model = (model_class or RAEModel)(rae_config)

    encoder_state = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    load_encoder(model.encoder, encoder_state, "the diffusers encoder into RAEModel.encoder")
    decoder_state = {
        decoder_key_from_diffusers(k.removeprefix("decoder.")): v
        for k, v in state.items()
        if k.startswith("decoder.") and k != "decoder.decoder_pos_embed"
    }
    load_exact(model.decoder, decoder_state, "the diffusers decoder into RAEModel.decoder")
    known = {"encoder_mean", "encoder_std", "_latents_mean", "_latents_std", "decoder.decoder_pos_embed"}
    unknown = [k for k in state if k not in known and not k.startswith(("encoder.", "decoder."))]
    if unknown:
        raise ValueError(f"Unexpected keys in the diffusers checkpoint: {format_keys(unknown)}")

    channels, grid = rae_config.latent_channels, rae_config.latent_grid_size
    reshape_to_2d = bool(config.get("reshape_to_2d", True))
    if not reshape_to_2d:
        logger.warning("diffusers reshape_to_2d=False: its latents are [B, N, C] tokens, ours are [B, C, h, w].")
    stats = {}
    for name, buffer, default in (("latents_mean", "_latents_mean", 0.0), ("latents_std", "_latents_std", 1.0)):
        value = state.get(buffer)
        if value is None:
            value = config.get(name)
        value = _as_tensor(value if value is not None else [default])
        stats[name] = _to_chw(value.double(), channels, grid, reshape_to_2d, name)
    mean, var = diffusers_stats_to_rae(
        stats["latents_mean"],
        stats["latents_std"],
        float(config.get("scaling_factor") or 1.0),
        latent_stats_convention,
        rae_config.latent_norm_eps,
    )
    if var is not None:
        model.set_latent_stats(mean.float(), var.float())
    return model.eval()


def _warn_position_embedding(grid: int) -> None:
    if grid != DIFFUSERS_POS_EMBED_BASE_GRID:
        logger.warning(
            "Latent grid %dx%d: diffusers' decoder position embedding scales positions by %d/%d, ours (and the "
            "official RAE) uses integer positions, so the two decoders differ on this grid (identical only at 16x16).",
            grid,
            grid,
            DIFFUSERS_POS_EMBED_BASE_GRID,
            grid,
        )


# ----------------------------------------------------------------------------------------------------------------------
# ours -> diffusers
# ----------------------------------------------------------------------------------------------------------------------
def _architecture(config: PreTrainedConfig) -> dict[str, Any]:
    values = config.to_dict()
    return {k: values[k] for k in ARCHITECTURE_FIELDS if k in values}


def rae_to_diffusers(
    model: RAEModel, *, scaling_factor: float = 1.0, latent_stats_convention: str = "diffusers"
) -> AutoencoderRAE:
    """Our `RAEModel` -> a diffusers `AutoencoderRAE` (eval mode) with the same encode/decode outputs.

    `scaling_factor` is written to the diffusers config and compensated in `latents_std` (`std = s * sqrt(var + eps)
    - 1e-5`), so diffusers' latents and reconstructions still equal ours; leave it at 1 unless a pipeline reads it.
    """
    from diffusers import AutoencoderRAE

    check_convention(latent_stats_convention)
    config = model.config
    encoder_config = config.encoder_config
    encoder_type = MODEL_TYPE_TO_ENCODER_TYPE.get(encoder_config.model_type)
    if encoder_type is None:
        raise ValueError(
            f"diffusers' AutoencoderRAE supports encoders {sorted(MODEL_TYPE_TO_ENCODER_TYPE)}; this RAE uses "
            f"{encoder_config.model_type!r}."
        )
    problems = []
    if config.decoder_hidden_act != "gelu":
        problems.append(f"decoder_hidden_act={config.decoder_hidden_act!r} (diffusers: 'gelu')")
    if not math.isclose(config.decoder_layer_norm_eps, DIFFUSERS_DECODER_LAYER_NORM_EPS):
        problems.append(f"decoder_layer_norm_eps={config.decoder_layer_norm_eps} (diffusers: 1e-12)")
    if config.num_channels != 3:
        problems.append(f"num_channels={config.num_channels} (diffusers: 3)")
    if problems:
        raise ValueError("diffusers' AutoencoderRAE cannot represent this RAE: " + "; ".join(problems))
    if config.noise_distribution != "uniform":
        logger.warning("noise_distribution=%r: diffusers only has the uniform one.", config.noise_distribution)
    _warn_position_embedding(config.latent_grid_size)

    mean, std = rae_stats_to_diffusers(
        model.latents_mean.detach().cpu(),
        model.latents_var.detach().cpu(),
        bool(config.normalize_latents),
        scaling_factor,
        latent_stats_convention,
        config.latent_norm_eps,
    )
    mean, std = compact(mean), compact(std)
    if mean == [0.0] and std == [1.0]:
        mean, std = None, None  # diffusers' defaults (zeros(1) / ones(1))
    image_mean, image_std = list(config.encoder_image_mean), list(config.encoder_image_std)
    if image_mean == list(IMAGENET_DEFAULT_MEAN) and image_std == list(IMAGENET_DEFAULT_STD):
        image_mean, image_std = None, None  # diffusers' defaults
    kwargs = dict(
        encoder_type=encoder_type,
        encoder_hidden_size=int(encoder_config.hidden_size),
        encoder_patch_size=config.encoder_patch_size,
        encoder_num_hidden_layers=int(encoder_config.num_hidden_layers),
        decoder_hidden_size=config.decoder_hidden_size,
        decoder_num_hidden_layers=config.decoder_num_hidden_layers,
        decoder_num_attention_heads=config.decoder_num_attention_heads,
        decoder_intermediate_size=config.decoder_intermediate_size,
        patch_size=config.decoder_patch_size,
        encoder_input_size=config.encoder_input_size,
        num_channels=config.num_channels,
        encoder_norm_mean=image_mean,
        encoder_norm_std=image_std,
        latents_mean=mean,
        latents_std=std,
        noise_tau=float(config.noise_tau),
        scaling_factor=float(scaling_factor),
    )
    try:
        vae = AutoencoderRAE(**kwargs)
    except AttributeError as error:
        if "vision_model" in str(error):
            raise RuntimeError(
                "This diffusers version cannot build its 'siglip2' encoder with the installed transformers "
                "(SiglipVisionModel has no .vision_model since transformers 5); upgrade diffusers."
            ) from error
        raise
    ours, theirs = _architecture(encoder_config), _architecture(vae.encoder.config)
    differences = {
        k: (ours.get(k), theirs.get(k)) for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k)
    }
    if differences:
        raise ValueError(
            f"diffusers builds its {encoder_type!r} encoder from hidden size, patch size and depth only (head dim "
            f"{DIFFUSERS_HEAD_DIM}, other fields at their defaults); this RAE's encoder differs in "
            + ", ".join(f"{k}: ours {a!r} vs diffusers {b!r}" for k, (a, b) in differences.items())
        )
    load_encoder(vae.encoder, model.encoder.state_dict(), "RAEModel.encoder into the diffusers encoder")
    decoder_state = {decoder_key_to_diffusers(k): v for k, v in model.decoder.state_dict().items()}
    load_exact(vae.decoder, decoder_state, "RAEModel.decoder into the diffusers decoder")
    return vae.eval()


def save_diffusers(model: RAEModel, path: str | os.PathLike, **kwargs) -> str:
    """Write `model` as a diffusers `AutoencoderRAE` folder (`kwargs` go to `rae_to_diffusers`); returns the path."""
    rae_to_diffusers(model, **kwargs).save_pretrained(os.fspath(path))
    return os.fspath(path)


# ----------------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------------
def add_commands(commands: argparse._SubParsersAction) -> None:
    """The `from-diffusers` and `to-diffusers` sub-commands."""
    sub = commands.add_parser("from-diffusers", help="diffusers AutoencoderRAE (folder or hub id) -> RAEModel folder")
    sub.add_argument("source")
    sub.add_argument("output_dir")
    sub.add_argument("--subfolder", default=None)
    sub.add_argument("--latent_stats_convention", choices=LATENT_STATS_CONVENTIONS, default="diffusers")
    sub.set_defaults(run=_run)

    sub = commands.add_parser("to-diffusers", help="RAEModel folder or hub id -> diffusers AutoencoderRAE folder")
    sub.add_argument("source")
    sub.add_argument("output_dir")
    sub.add_argument("--scaling_factor", type=float, default=1.0)
    sub.add_argument("--latent_stats_convention", choices=LATENT_STATS_CONVENTIONS, default="diffusers")
    sub.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> None:
    if args.command == "from-diffusers":
        model = rae_from_diffusers(
            args.source, subfolder=args.subfolder, latent_stats_convention=args.latent_stats_convention
        )
        model.save_pretrained(args.output_dir)
    else:
        save_diffusers(
            RAEModel.from_pretrained(args.source),
            args.output_dir,
            scaling_factor=args.scaling_factor,
            latent_stats_convention=args.latent_stats_convention,
        )
    print(f"Wrote {args.output_dir}")


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m rae_hf.convert rae_diffusers {from-diffusers,to-diffusers} ...`."""
    parser = argparse.ArgumentParser(
        prog="python -m rae_hf.convert rae_diffusers", description=__doc__.split("\n\n")[0]
    )
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    args.run(args)
