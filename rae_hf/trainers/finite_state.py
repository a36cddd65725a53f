"""Finiteness of everything a checkpoint holds: the model, the optimizer state and every registered state (EMAs, a
discriminator and its optimizer, teachers, centres...), checked with one host sync per device before each save.

Tensors with dimensions must be finite; a 0-dim tensor may be +/-inf (a "best value so far" starts at inf) but not
NaN."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn


def nested_tensors(obj: Any) -> Iterator[torch.Tensor]:
    """The floating-point tensors in a module, a tensor, or nested dicts/lists/tuples of them."""
    if isinstance(obj, nn.Module):
        yield from nested_tensors(list(obj.parameters()) + list(obj.buffers()))
    elif isinstance(obj, torch.Tensor):
        if obj.is_floating_point() or obj.is_complex():
            yield obj.detach()
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from nested_tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from nested_tensors(value)


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """Whether every tensor is finite (0-dim ones: not NaN); one host sync per device."""
    flags: dict[torch.device, list[torch.Tensor]] = {}
    for tensor in tensors:
        ok = ~torch.isnan(tensor) if tensor.dim() == 0 else torch.isfinite(tensor).all()
        flags.setdefault(tensor.device, []).append(ok)
    return all(bool(torch.stack(oks).all().item()) for oks in flags.values())


def nonfinite_states(states: dict[str, Any]) -> list[str]:
    """The names of the registered states (objects with `state_dict()`) holding a non-finite tensor."""
    return [name for name, obj in states.items() if not all_finite(nested_tensors(obj.state_dict()))]
