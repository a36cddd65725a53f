"""Official RAE stage-2 checkpoints (bytetriper/RAE `DiTwDDTHead`) -> `DiTDHModel` `save_pretrained` folders.

    python -m rae_hf.convert dit stage2_model.pt runs/ditdh-xl [--weights ema|model] [--overwrite]

The source is a training checkpoint (a dict with `ema`, `model`, `optimizer`, ...; `--weights` picks `ema`, the
default, or `model`) or a flat state dict (the released `stage2_model.pt` files). It is read with `weights_only=True`.
`DiTDHModel` keeps the official parameter and buffer names, so the weights are copied as they are (strict); every
size is inferred from the tensors: channels and widths from the two patch embeddings, grid from `pos_embed`, the
encoder/head split from the `norm1` widths, heads from the RoPE table widths, SwiGLU widths from `w12`, classes from
the label table. The frozen Fourier frequencies `t_embedder.W` (random per run) and the RoPE tables are copied too.
The label table is read as `num_classes + 1` rows (the null class last), as in every official config (class dropout
0.1); a model trained without class dropout has no null row, and its last class would be read as the null class.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping, Sequence

import torch
from transformers import initialization as init

from ..models.checkpoint_io import is_state_dict, load_exact, read_checkpoint, select_state_dict, strip_prefixes
from ..models.dit import DiTDHConfig, DiTDHModel

WEIGHT_KEYS = ("ema", "model")
_REQUIRED = (
    "pos_embed",
    "x_embedder.proj.weight",
    "s_embedder.proj.weight",
    "t_embedder.W",
    "y_embedder.embedding_table.weight",
    "enc_feat_rope.freqs_cos",
    "dec_feat_rope.freqs_cos",
    "blocks.0.norm1.weight",
)


def official_state_dict(checkpoint: object, path: str, weights: str = "ema") -> dict[str, torch.Tensor]:
    """The `weights` entry of a training checkpoint, or the checkpoint itself when it is a flat state dict."""
    if weights not in WEIGHT_KEYS:
        raise ValueError(f"weights={weights!r} must be one of {WEIGHT_KEYS}.")
    if is_state_dict(checkpoint):
        return strip_prefixes(checkpoint)
    if isinstance(checkpoint, Mapping) and weights not in checkpoint:
        other = next(k for k in WEIGHT_KEYS if k != weights)
        hint = f"; it has {other!r}: pass --weights {other}" if other in checkpoint else ""
        raise KeyError(f"{path} has no {weights!r} entry (top level: {sorted(checkpoint)}){hint}.")
    return strip_prefixes(select_state_dict(checkpoint, path, state_key=weights))


def config_from_state_dict(state: Mapping[str, torch.Tensor], **overrides) -> DiTDHConfig:
    """A `DiTDHConfig` with every size read from the tensors; `overrides` win (`num_hidden_layers` is needed only
    when the encoder and head widths are equal, where the split is not in the shapes)."""
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise ValueError(f"Not a DiT-DH state dict: {missing} missing (first keys: {sorted(state)[:5]}).")
    head_width, channels, patch, _ = state["x_embedder.proj.weight"].shape
    width = state["s_embedder.proj.weight"].shape[0]
    if patch != 1:
        raise ValueError(f"x_embedder has patch size {patch}; DiT-DH supports only 1 (as the official code).")
    tokens = state["pos_embed"].shape[1]
    grid = math.isqrt(tokens)
    if grid * grid != tokens:
        raise ValueError(f"pos_embed has {tokens} positions, not a square grid.")
    num_blocks = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    widths = [state[f"blocks.{i}.norm1.weight"].shape[0] for i in range(num_blocks)]
    if "num_hidden_layers" in overrides:
        depth = overrides["num_hidden_layers"]
    elif width == head_width:
        raise ValueError(
            f"Encoder and head have the same width {width}: give num_hidden_layers (the encoder depth), it is not "
            "in the shapes."
        )
    else:
        depth = next((i for i, w in enumerate(widths) if w != width), num_blocks)
    if not 0 < depth < num_blocks or widths[:depth] != [width] * depth or set(widths[depth:]) != {head_width}:
        raise ValueError(f"Block widths {widths} are not {width} (encoder) followed by {head_width} (head).")
    values = dict(
        in_channels=channels,
        input_size=grid,
        hidden_size=width,
        num_hidden_layers=depth,
        num_attention_heads=width // state["enc_feat_rope.freqs_cos"].shape[1],
        intermediate_size=state["blocks.0.mlp.w12.weight"].shape[0] // 2,
        head_hidden_size=head_width,
        head_num_layers=num_blocks - depth,
        head_num_attention_heads=head_width // state["dec_feat_rope.freqs_cos"].shape[1],
        head_intermediate_size=state[f"blocks.{depth}.mlp.w12.weight"].shape[0] // 2,
        num_classes=state["y_embedder.embedding_table.weight"].shape[0] - 1,
        fourier_embedding_size=state["t_embedder.W"].shape[0],
    )
    return DiTDHConfig(**(values | overrides))


def convert_dit_checkpoint(
    src: str, dst: str | None = None, weights: str = "ema", overwrite: bool = False, **overrides
) -> DiTDHModel:
    """A `DiTDHModel` holding `weights` of the official `src` (exact key match, finite values), saved to `dst` (a
    non-empty `dst` is refused unless `overwrite`)."""
    if dst is not None and os.path.isdir(dst) and os.listdir(dst) and not overwrite:
        raise FileExistsError(f"{dst} exists and is not empty; pass --overwrite (overwrite=True) to replace it.")
    checkpoint = read_checkpoint(src)
    state = official_state_dict(checkpoint, src, weights)
    config = config_from_state_dict(state, **overrides)
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"{src} ({weights}) holds non-finite values in {bad[:5]}; refusing to convert.")
    with init.no_init_weights():  # every tensor comes from the file: skip the (slow, at XL size) random init
        model = DiTDHModel(config)
    what = f"{src} ({weights}) into DiT-DH {config.hidden_size}x{config.num_hidden_layers}"
    load_exact(model, state, what)
    model.freeze_fixed_parameters()
    if dst is not None:
        model.save_pretrained(dst)
    return model.eval()


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m rae_hf.convert dit SRC DST [--weights ema|model] [--overwrite] [--num_hidden_layers N]`."""
    parser = argparse.ArgumentParser(prog="python -m rae_hf.convert dit", description=__doc__.splitlines()[0])
    parser.add_argument("src", help="Official checkpoint (.pt/.pth or .safetensors): a training dict or a state dict.")
    parser.add_argument("dst", help="Output folder (config.json, model.safetensors and the model code).")
    parser.add_argument("--weights", choices=WEIGHT_KEYS, default="ema", help="Entry of a training checkpoint.")
    parser.add_argument("--overwrite", action="store_true", help="Write into a non-empty DST.")
    parser.add_argument(
        "--num_hidden_layers", type=int, default=None, help="Encoder depth; only for equal encoder and head widths."
    )
    args = parser.parse_args(argv)
    overrides = {} if args.num_hidden_layers is None else {"num_hidden_layers": args.num_hidden_layers}
    try:
        model = convert_dit_checkpoint(args.src, args.dst, args.weights, args.overwrite, **overrides)
    except FileExistsError as error:
        raise SystemExit(str(error)) from error
    config, count = model.config, sum(p.numel() for p in model.parameters())
    print(
        f"Saved DiT-DH (encoder {config.hidden_size}x{config.num_hidden_layers}, head "
        f"{config.head_hidden_size}x{config.head_num_layers}, {count / 1e6:.1f}M parameters, {args.weights}) "
        f"to {args.dst}"
    )


__all__ = ["WEIGHT_KEYS", "config_from_state_dict", "convert_dit_checkpoint", "main", "official_state_dict"]
