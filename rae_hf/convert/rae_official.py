"""Conversion of the official RAE repository's checkpoints (decoder `.pt` + `stat.pt`) into `RAEModel`.

    python -m rae_hf.convert from-official runs/rae-official --decoder model.pt --stats stat.pt \
        --encoder facebook/dinov2-with-registers-base

Writes a `save_pretrained` folder. The official decoder uses our key names (HF ViTMAE naming); its fixed
`decoder_pos_embed` is checked against the 2-D sin-cos embedding and dropped. Latent normalization is the official
`(z - mean) / sqrt(var + 1e-5)`; the released DINOv2-B `stat.pt` has only `var` (zero mean).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence

import torch

from ..models.checkpoint_io import format_keys, load_exact, read_checkpoint, select_state_dict, strip_prefixes
from ..models.rae import DECODER_PRESETS, RAEModel
from ..models.rae.backbone_layouts import as_int, load_vision_config
from ..models.rae.modeling_rae import sincos_position_embedding_2d
from ._diffusers_mapping import decoder_key_from_diffusers

__all__ = ["load_official_decoder_state", "main", "rae_from_official"]

logger = logging.getLogger(__name__)

# Preset heads by decoder width, to read an official checkpoint (heads are not visible in the weights).
HEADS_BY_DECODER_WIDTH = {p["hidden_size"]: p["num_attention_heads"] for p in DECODER_PRESETS.values()}
OFFICIAL_STATE_KEYS = ("ema", "model", "state_dict", "module", "decoder")


def load_official_decoder_state(path: str, state_key: str | None = None) -> dict[str, torch.Tensor]:
    """The decoder state dict (our/official key names, no `decoder.` prefix) of an official RAE checkpoint.

    Accepted layouts: a plain decoder state dict (the released `model.pt`); one nested under `state_key` or, by
    default, the first of `ema`, `model`, `state_dict`, `module`, `decoder`; keys with `module.` / `_orig_mod.`
    prefixes (DDP / torch.compile); a whole-RAE state dict (`decoder.*` kept, `encoder.*` etc. ignored with a log
    line); diffusers attention names (`to_q`...). `decoder_pos_embed` is kept here and checked by the caller.
    """
    state = select_state_dict(read_checkpoint(path), path, state_key, OFFICIAL_STATE_KEYS)
    state = strip_prefixes(state)
    if any(k.startswith("decoder.") for k in state):
        ignored = sorted({k.split(".", 1)[0] for k in state if not k.startswith("decoder.")})
        if ignored:
            logger.info("Ignoring non-decoder entries of %s: %s.*", path, ", ".join(ignored))
        state = {k.removeprefix("decoder."): v for k, v in state.items() if k.startswith("decoder.")}
    return {decoder_key_from_diffusers(k): v for k, v in state.items()}


def _decoder_shape_config(state: Mapping[str, torch.Tensor], num_channels: int) -> dict[str, int]:
    """Decoder sizes read from the weights (everything but the number of heads)."""
    required = ("decoder_embed.weight", "decoder_pred.weight", "decoder_layers.0.intermediate.dense.weight")
    absent = [k for k in required if k not in state]
    if absent:
        raise ValueError(f"Not an RAE decoder state dict: missing {absent} (found {format_keys(list(state), 10)}).")
    layers = {int(m[1]) for k in state if (m := re.match(r"decoder_layers\.(\d+)\.", k))}
    outputs = state["decoder_pred.weight"].shape[0]
    patch = math.isqrt(outputs // num_channels)
    if patch * patch * num_channels != outputs:
        raise ValueError(f"decoder_pred has {outputs} outputs, not patch^2 x {num_channels} channels.")
    return {
        "decoder_hidden_size": int(state["decoder_embed.weight"].shape[0]),
        "decoder_num_hidden_layers": max(layers) + 1,
        "decoder_intermediate_size": int(state["decoder_layers.0.intermediate.dense.weight"].shape[0]),
        "decoder_patch_size": patch,
    }


def _read_official_stats(path: str) -> dict[str, torch.Tensor]:
    """`mean` (optional) and `var` of an official `stat.pt`, leading singleton dims (BatchNorm-style) removed."""
    stats = read_checkpoint(path)
    if not isinstance(stats, Mapping) or stats.get("var") is None:
        keys = sorted(stats) if isinstance(stats, Mapping) else type(stats).__name__
        raise ValueError(f"{path} must be a dict with 'var' (and optionally 'mean'); found {keys}.")
    unknown = sorted(set(stats) - {"mean", "var"})
    if unknown:
        logger.info("Ignoring entries %s of %s.", unknown, path)
    result = {}
    for name in ("mean", "var"):
        if stats.get(name) is not None:
            value = torch.as_tensor(stats[name], dtype=torch.float32)
            while value.dim() > 3 and value.shape[0] == 1:
                value = value[0]
            result[name] = value
    return result


def _stats_to_chw(stats: Mapping[str, torch.Tensor], channels: int, grid: int, path: str) -> dict[str, torch.Tensor]:
    result = {}
    for name, value in stats.items():
        try:
            result[name] = torch.broadcast_to(value, (channels, grid, grid)).clone()
        except RuntimeError as error:
            raise ValueError(
                f"{path}: {name} of shape {tuple(value.shape)} does not fit latents {(channels, grid, grid)}."
            ) from error
    return result


def rae_from_official(
    decoder_checkpoint: str,
    stats_path: str | None,
    encoder_name_or_path: str,
    *,
    state_key: str | None = None,
    **config_kwargs,
) -> RAEModel:
    """Our `RAEModel` (eval mode) from the official RAE repository's decoder `.pt` and `stat.pt`.

    The decoder sizes come from the weights; the number of heads from `decoder_num_attention_heads`/`decoder_preset`
    in `config_kwargs` or, failing that, the preset of that width (ViT-S/B/L/XL). The encoder (hub id or folder) is
    loaded with `RAEModel.from_encoder_pretrained`; `encoder_input_size` defaults to the token grid (of the saved
    `decoder_pos_embed`, else of the `[C, h, w]` statistics) x the encoder patch, else to the encoder's image-processor
    size. `stat.pt` holds `var` and optionally `mean` (the released DINOv2-B statistics have no mean).
    Other `config_kwargs` (e.g. `noise_tau`) go to `RAEConfig`.
    """
    state = load_official_decoder_state(decoder_checkpoint, state_key)
    channels_count = int(config_kwargs.get("num_channels", 3))
    inferred = _decoder_shape_config(state, channels_count)
    hidden = inferred["decoder_hidden_size"]
    if "decoder_num_attention_heads" not in config_kwargs and "decoder_preset" not in config_kwargs:
        if hidden not in HEADS_BY_DECODER_WIDTH:
            raise ValueError(
                f"Decoder width {hidden} matches no preset; pass decoder_num_attention_heads (not visible in weights)."
            )
        inferred["decoder_num_attention_heads"] = HEADS_BY_DECODER_WIDTH[hidden]
    if "decoder_preset" not in config_kwargs:
        for key, value in inferred.items():
            config_kwargs.setdefault(key, value)

    patch = as_int(load_vision_config(encoder_name_or_path, "encoder_name_or_path").patch_size)
    position = state.pop("decoder_pos_embed", None)
    stats = _read_official_stats(stats_path) if stats_path is not None else None
    grid = math.isqrt(position.shape[1] - 1) if position is not None else None
    if grid is None and stats is not None and stats["var"].dim() == 3:
        grid = int(stats["var"].shape[-1])  # [C, h, w] statistics also tell the token grid
    if grid is not None and "encoder_input_size" not in config_kwargs:
        config_kwargs["encoder_input_size"] = grid * patch

    model = RAEModel.from_encoder_pretrained(encoder_name_or_path, **config_kwargs)
    config = model.config
    mismatched = {k: (v, getattr(config, k)) for k, v in inferred.items() if getattr(config, k) != v}
    if mismatched:
        raise ValueError(
            f"{decoder_checkpoint} does not match the requested config: "
            + ", ".join(f"{k}: checkpoint {a} vs config {b}" for k, (a, b) in mismatched.items())
        )
    latent_in = int(state["decoder_embed.weight"].shape[1])
    if latent_in != config.latent_channels:
        raise ValueError(
            f"The decoder takes {latent_in}-d latents; encoder {encoder_name_or_path} gives {config.latent_channels}."
        )
    if position is not None:
        if grid != config.latent_grid_size:
            raise ValueError(
                f"The decoder was trained on a {grid}x{grid} token grid; encoder_input_size="
                f"{config.encoder_input_size} gives {config.latent_grid_size}x{config.latent_grid_size}."
            )
        expected = sincos_position_embedding_2d(hidden, grid)
        difference = (position.float().reshape(expected.shape) - expected).abs().max().item()
        if difference > 1e-4:
            raise ValueError(
                f"decoder_pos_embed of {decoder_checkpoint} differs from the fixed MAE 2-D sin-cos embedding by "
                f"{difference:.3g}; this decoder cannot be represented exactly."
            )
    load_exact(model.decoder, state, f"{decoder_checkpoint} into RAEModel.decoder")
    if stats is not None:
        stats = _stats_to_chw(stats, config.latent_channels, config.latent_grid_size, stats_path)
        model.set_latent_stats(stats.get("mean"), stats["var"])
    return model.eval()


# ----------------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `from-official`."""
    parser.add_argument("output_dir")
    parser.add_argument("--decoder", required=True, help="Official decoder checkpoint (.pt).")
    parser.add_argument(
        "--encoder", required=True, help="Encoder hub id or folder (e.g. facebook/dinov2-with-registers-base)."
    )
    parser.add_argument("--stats", default=None, help="Official stat.pt with 'var' (and optionally 'mean').")
    parser.add_argument(
        "--state_key", default=None, help="Entry of the checkpoint holding the state dict (default: auto)."
    )
    parser.add_argument("--encoder_input_size", type=int, default=None)
    parser.add_argument("--decoder_num_attention_heads", type=int, default=None)
    parser.add_argument("--noise_tau", type=float, default=None)
    parser.add_argument(
        "--config_kwargs", type=json.loads, default=None, help="JSON object of further RAEConfig fields."
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    kwargs = dict(args.config_kwargs or {})
    for name in ("encoder_input_size", "decoder_num_attention_heads", "noise_tau"):
        if getattr(args, name) is not None:
            kwargs[name] = getattr(args, name)
    model = rae_from_official(args.decoder, args.stats, args.encoder, state_key=args.state_key, **kwargs)
    model.save_pretrained(args.output_dir)
    print(f"Wrote {args.output_dir}")


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m rae_hf.convert rae_official <output_dir> --decoder ... --encoder ...`."""
    description = __doc__.split("\n\n")[0]
    parser = argparse.ArgumentParser(prog="python -m rae_hf.convert rae_official", description=description)
    add_arguments(parser)
    args = parser.parse_args(argv)
    args.run(args)
