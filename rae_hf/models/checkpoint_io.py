"""Reading checkpoint files without executing anything: find a file (local folder or hub), read it (safetensors, or
`torch.load(weights_only=True)`), pick the state dict inside a training checkpoint, strip wrapper prefixes, and load
exactly with a report of missing, unexpected and mis-shaped keys.

The one checkpoint reader of rae_hf, shared by the converters (`rae_hf.convert`) and pretrained-weight loading
(`rae_hf.models.vit.pretrained`); nothing here knows a model. Model files copied next to pushed weights never
import it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "DEFAULT_STATE_KEYS",
    "WRAPPER_PREFIXES",
    "format_keys",
    "is_state_dict",
    "load_exact",
    "read_checkpoint",
    "read_weights",
    "read_weights_from",
    "resolve_file",
    "select_state_dict",
    "strip_prefixes",
]

logger = logging.getLogger(__name__)

# Entries of a training checkpoint that hold the weights, in order of preference (EMA first).
DEFAULT_STATE_KEYS = ("ema", "model", "state_dict", "module")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP, torch.compile


def format_keys(keys: Iterable[str], limit: int = 20) -> str:
    """Sorted keys, the first `limit` of them, with a count of the rest."""
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def is_state_dict(value: Any) -> bool:
    """A non-empty mapping of tensors."""
    return isinstance(value, Mapping) and len(value) > 0 and all(isinstance(v, torch.Tensor) for v in value.values())


def resolve_file(source: str | os.PathLike, filename: str, subfolder: str | None = None) -> str | None:
    """Path of `filename` in a local folder or a hub repo (downloaded), or None when it has no such file."""
    source = os.fspath(source)
    if os.path.isdir(source):
        path = os.path.join(source, subfolder or "", filename)
        return path if os.path.isfile(path) else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return hf_hub_download(source, filename, subfolder=subfolder)
    except (EntryNotFoundError, LocalEntryNotFoundError):
        return None


def read_checkpoint(path: str | os.PathLike) -> Any:
    """The content of a `.safetensors` file (a state dict) or a torch file loaded with `weights_only=True`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint file {path!r} does not exist.")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle refusing a non-tensor object, a truncated file, ...
        raise ValueError(f"Cannot read {path!r} as a weights-only torch checkpoint: {error}") from error


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A file that must hold a state dict directly."""
    state = read_checkpoint(path)
    if not is_state_dict(state):
        raise ValueError(f"{os.fspath(path)!r} does not hold a state dict of tensors.")
    return dict(state)


def read_weights_from(
    source: str | os.PathLike, candidates: Sequence[tuple[str, str]], subfolder: str | None = None
) -> dict[str, torch.Tensor]:
    """Weights of a folder or hub repo: the first `(single file, shard index)` pair of `candidates` that exists
    (e.g. `("model.safetensors", "model.safetensors.index.json")`); a sharded checkpoint is read shard by shard."""
    for name, index in candidates:
        path = resolve_file(source, name, subfolder)
        if path is not None:
            return read_weights(path)
        index_path = resolve_file(source, index, subfolder)
        if index_path is not None:
            with open(index_path) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                shard_path = resolve_file(source, shard, subfolder)
                if shard_path is None:
                    raise FileNotFoundError(f"Shard {shard} listed in {index} is missing from {os.fspath(source)}.")
                state.update(read_weights(shard_path))
            return state
    names = [name for name, _ in candidates]
    raise FileNotFoundError(
        f"No weights ({', '.join(names)} or their shards) in {os.fspath(source)} (subfolder={subfolder})."
    )


def select_state_dict(
    checkpoint: Any, path: str, state_key: str | None = None, candidates: Sequence[str] = DEFAULT_STATE_KEYS
) -> dict[str, torch.Tensor]:
    """The state dict of a loaded checkpoint: itself, the entry `state_key`, or the first of `candidates` that is
    one. Errors name the file and list its top-level entries."""

    def top_level() -> Any:
        return sorted(checkpoint) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__

    if state_key is not None:
        if not isinstance(checkpoint, Mapping) or state_key not in checkpoint:
            raise KeyError(f"{path} has no {state_key!r} entry (top level: {top_level()}).")
        selected = checkpoint[state_key]
    elif is_state_dict(checkpoint):
        selected = checkpoint
    else:
        found = None
        if isinstance(checkpoint, Mapping):
            found = next((k for k in candidates if is_state_dict(checkpoint.get(k))), None)
        if found is None:
            raise ValueError(
                f"{path} is neither a state dict nor holds one under {list(candidates)} (top level: {top_level()}); "
                "pass state_key."
            )
        logger.info("Using the %r state dict of %s.", found, path)
        selected = checkpoint[found]
    if not is_state_dict(selected):
        raise ValueError(f"The selected entry of {path} is not a state dict of tensors.")
    return dict(selected)


def strip_prefixes(
    state: Mapping[str, torch.Tensor], prefixes: Sequence[str] = WRAPPER_PREFIXES
) -> dict[str, torch.Tensor]:
    """Keys without leading wrapper prefixes (repeatedly: `module._orig_mod.x` -> `x`)."""
    result = {}
    for key, value in state.items():
        while key.startswith(tuple(prefixes)):
            key = next(key.removeprefix(p) for p in prefixes if key.startswith(p))
        result[key] = value
    return result


def load_exact(module: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """`load_state_dict(strict=True)` with an error that lists missing, unexpected and mis-shaped keys."""
    target = module.state_dict()
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    shapes = [
        f"{k}: {tuple(v.shape)} vs {tuple(target[k].shape)}"
        for k, v in state.items()
        if k in target and tuple(v.shape) != tuple(target[k].shape)
    ]
    if missing or unexpected or shapes:
        lines = [f"Cannot load {what}:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {format_keys(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {format_keys(unexpected)}")
        if shapes:
            lines.append(f"  shape mismatches (source vs target) ({len(shapes)}): {format_keys(shapes)}")
        raise ValueError("\n".join(lines))
    module.load_state_dict(dict(state), strict=True)
