"""Nested training state (an optimizer's, a scheduler's, a scaler's `state_dict()`) without pickle: its tensors in
`<name>.safetensors` and everything else in `<name>.json`, read back exactly (floats by `repr`, int dict keys and
tuples kept)."""

from __future__ import annotations

import json
import os
from typing import Any

import safetensors.torch
import torch

__all__ = ["load_state_files", "save_state_files"]

TENSOR, TUPLE, DICT = "__tensor__", "__tuple__", "__dict__"


def _encode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = value.detach().cpu().contiguous().clone()
        return {TENSOR: key}
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str | int | float | bool) and key is not None:
                raise TypeError(f"Cannot store a state key of type {type(key).__name__} without pickle.")
        return {DICT: [[key, _encode(item, tensors)] for key, item in value.items()]}
    if isinstance(value, tuple):
        return {TUPLE: [_encode(item, tensors) for item in value]}
    if isinstance(value, list):
        return [_encode(item, tensors) for item in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise TypeError(f"Cannot store a state value of type {type(value).__name__} without pickle.")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(item, tensors) for item in value]
    if isinstance(value, dict):
        if TENSOR in value:
            return tensors[value[TENSOR]]
        if TUPLE in value:
            return tuple(_decode(item, tensors) for item in value[TUPLE])
        return {key: _decode(item, tensors) for key, item in value[DICT]}
    return value


def save_state_files(state: Any, folder: str, name: str) -> list[str]:
    """Write `state` (tensors, dicts, lists, tuples, numbers, strings, None) as `<name>.safetensors` + `<name>.json`
    in `folder`; returns both paths. Anything else (a function, an object) is a `TypeError`, never a pickle."""
    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(state, tensors)
    paths = [os.path.join(folder, f"{name}.{ext}") for ext in ("safetensors", "json")]
    safetensors.torch.save_file(tensors, paths[0])
    with open(paths[1], "w") as f:
        json.dump(structure, f)
    return paths


def load_state_files(folder: str, name: str) -> Any:
    """The state `save_state_files(state, folder, name)` wrote, equal to it (tensors on the CPU)."""
    tensors = safetensors.torch.load_file(os.path.join(folder, f"{name}.safetensors"))
    with open(os.path.join(folder, f"{name}.json")) as f:
        return _decode(json.load(f), tensors)
