"""Official JiT checkpoints (LTH14/JiT `checkpoint-*.pth`) -> `save_pretrained` folders.

    python -m rae_hf.convert jit checkpoint-last.pth runs/jit-b16 [--weights model_ema1|model_ema2|model]

The official file is a dict with `model`, `model_ema1` (decay 0.9999, the one used for sampling), `model_ema2`
(0.9996) — full state dicts whose keys carry the `net.` prefix of the official `Denoiser` — plus `optimizer`, `epoch`
and the training `args` (an `argparse.Namespace`). It is read with `weights_only=True`, allow-listing exactly that
class. `JiTModel` uses the official parameter names, so the conversion strips `net.` and infers the size.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping, Sequence

import torch

from ..models.checkpoint_io import load_exact, read_checkpoint, select_state_dict, strip_prefixes
from ..models.jit import JIT_SIZES, JiTConfig, JiTModel

WEIGHT_KEYS = ("model_ema1", "model_ema2", "model")
PREFIXES = ("net.", "module.", "_orig_mod.")
_REQUIRED = ("pos_embed", "x_embedder.proj1.weight", "y_embedder.embedding_table.weight", "blocks.0.attn.q_norm.weight")


def load_official_checkpoint(path: str) -> dict:
    """The checkpoint dict, read with `weights_only=True` and only `argparse.Namespace` (the args) allow-listed."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        checkpoint = read_checkpoint(path)
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint dict.")
    return dict(checkpoint)


def official_state_dict(checkpoint: Mapping, path: str, weights: str = "model_ema1") -> dict[str, torch.Tensor]:
    """`weights` of the checkpoint (a seed-trainer `model_state_dict` or a bare state dict also work), unprefixed."""
    if weights not in WEIGHT_KEYS:
        raise ValueError(f"weights={weights!r} must be one of {WEIGHT_KEYS}.")
    key = weights if weights in checkpoint else None
    if key is None and not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        if "model_state_dict" not in checkpoint:
            raise KeyError(f"{path} has no {weights!r} entry (top level: {sorted(checkpoint)}).")
        key = "model_state_dict"
    return strip_prefixes(select_state_dict(checkpoint, path, state_key=key), PREFIXES)


def _size_letter(args: argparse.Namespace | None, hidden: int, depth: int) -> str | None:
    match = re.match(r"^JiT-([BLHG])/\d+$", str(getattr(args, "model", "")))
    if match:
        return match.group(1)
    for name, size in JIT_SIZES.items():
        if size["hidden_size"] == hidden and size["num_hidden_layers"] == depth:
            return name
    return None


def config_from_state_dict(
    state: Mapping[str, torch.Tensor], args: argparse.Namespace | None = None, **overrides
) -> JiTConfig:
    """Every size from the tensors; `in_context_start` and dropout from the args' model name or the size preset;
    `noise_scale`/`t_eps`/dropout from the training args when they hold them."""
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise ValueError(f"Not a JiT state dict: {missing} missing (first keys: {sorted(state)[:5]}).")
    _, tokens, hidden = state["pos_embed"].shape
    bottleneck, channels, patch, _ = state["x_embedder.proj1.weight"].shape
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    n_ctx = state["in_context_posemb"].shape[1] if "in_context_posemb" in state else 0
    values = dict(
        image_size=round(tokens**0.5) * patch,
        patch_size=patch,
        num_channels=channels,
        hidden_size=hidden,
        num_hidden_layers=depth,
        num_attention_heads=hidden // state["blocks.0.attn.q_norm.weight"].shape[0],
        intermediate_size=state["blocks.0.mlp.w3.weight"].shape[1],
        bottleneck_dim=bottleneck,
        num_classes=state["y_embedder.embedding_table.weight"].shape[0] - 1,
        num_in_context_tokens=n_ctx,
    )
    size = _size_letter(args, hidden, depth)
    if size is not None:
        values["in_context_start"] = JIT_SIZES[size]["in_context_start"]
        values["dropout"] = JIT_SIZES[size].get("dropout", 0.0)
    elif n_ctx and "in_context_start" not in overrides:
        raise ValueError(f"Width {hidden} x depth {depth} is no published JiT size: give in_context_start.")
    for name, arg in (("dropout", "proj_dropout"), ("noise_scale", "noise_scale"), ("t_eps", "t_eps")):
        if getattr(args, arg, None) is not None:
            values[name] = float(getattr(args, arg))
    return JiTConfig(**(values | overrides))


def convert_jit_checkpoint(src: str, dst: str | None = None, weights: str = "model_ema1", **overrides) -> JiTModel:
    """A `JiTModel` holding `weights` of the official `src` (exact key match, finite values); saved to `dst`."""
    checkpoint = load_official_checkpoint(src)
    state = official_state_dict(checkpoint, src, weights)
    config = config_from_state_dict(state, checkpoint.get("args"), **overrides)
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"{src} ({weights}) holds non-finite values in {bad[:5]}; refusing to convert.")
    model = JiTModel(config)
    load_exact(model, state, f"{src} ({weights}) into JiT {config.hidden_size}x{config.num_hidden_layers}")
    if dst is not None:
        model.save_pretrained(dst)
    return model.eval()


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m rae_hf.convert jit SRC DST [--weights ...] [--in_context_start N]`."""
    parser = argparse.ArgumentParser(prog="python -m rae_hf.convert jit", description=__doc__.splitlines()[0])
    parser.add_argument("src", help="Official checkpoint (.pth), e.g. checkpoint-last.pth.")
    parser.add_argument("dst", help="Output folder (config.json, model.safetensors and the model code).")
    parser.add_argument("--weights", choices=WEIGHT_KEYS, default="model_ema1", help="EMA 0.9999 by default.")
    parser.add_argument("--in_context_start", type=int, default=None, help="Only for sizes that are not published.")
    args = parser.parse_args(argv)
    overrides = {} if args.in_context_start is None else {"in_context_start": args.in_context_start}
    model = convert_jit_checkpoint(args.src, args.dst, args.weights, **overrides)
    count = sum(p.numel() for p in model.parameters())
    print(f"Saved JiT ({count / 1e6:.1f}M parameters, {args.weights}) to {args.dst}")


__all__ = [
    "WEIGHT_KEYS",
    "config_from_state_dict",
    "convert_jit_checkpoint",
    "load_official_checkpoint",
    "main",
    "official_state_dict",
]
