"""Conversions between the core's time convention and the official RAE stage-2 one, used at the model boundary.

The core (see the package docstring) has t = 1 data; RAE's official code has t = 0 data. Both describe the same
point `x_t` on the same linear path, so the RAE time is `1 - t` and its velocity `d x_t / d t_rae = e - x` is the
negative of the core's. Every function whose name says `rae` takes or returns official RAE time.

Sampling keeps grid values as Python floats: an official float32 RAE time `t_rae` becomes the core time `1 - t_rae`
in float64, which is exact, so converting back gives the official float32 value bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar

import torch
from torch import nn

T = TypeVar("T", float, torch.Tensor)

SHIFT_BASE_DIM = 4096


def to_rae_time(t: T) -> T:
    """Core time -> official RAE time (`1 - t`); its own inverse, so also the way back (`from_rae_time`)."""
    return 1 - t


from_rae_time = to_rae_time


def to_rae_velocity(velocity: torch.Tensor) -> torch.Tensor:
    """Core velocity (`x - e`) <-> RAE velocity (`e - x`): a sign flip, its own inverse (`from_rae_velocity`)."""
    return -velocity


from_rae_velocity = to_rae_velocity


def rae_time_shift(dim: int, base: float = SHIFT_BASE_DIM) -> float:
    """RAE's dimension-dependent shift `s = sqrt(dim / base)`: sqrt(768*16*16/4096) = sqrt(48) at 256 px.

    The official code asserts s >= 1; smaller values (tiny test latents) are allowed here and shift towards data.
    """
    if dim <= 0 or base <= 0:
        raise ValueError(f"time-shift dim={dim} and base={base} must be positive.")
    return math.sqrt(dim / base)


def shift_rae_time(t: T, shift: float) -> T:
    """The official shift in RAE time, `s t / (1 + (s - 1) t)` (written as the official code, so float32 tensors give
    the official float32 values); s > 1 moves times towards noise (t_rae = 1); 0 and 1 are fixed."""
    if shift <= 0:
        raise ValueError(f"time shift={shift} must be positive.")
    return shift * t / (1 + (shift - 1) * t)


def shift_time(t: T, shift: float) -> T:
    """The same shift in core time: `t / (s - (s - 1) t)` (= `1 - shift_rae_time(1 - t, s)`)."""
    return from_rae_time(shift_rae_time(to_rae_time(t), shift))


def rae_guidance_interval(interval: Sequence[float]) -> tuple[float, float]:
    """An official `(t_min, t_max)` in RAE time -> the same bounds in core time, `(1 - t_max, 1 - t_min)`.

    The bounds are first rounded to float32 (the official code compares float32 times with them), then flipped in
    float64, so inclusive comparisons in core time select exactly the official steps.
    """
    if len(interval) != 2:
        raise ValueError(f"guidance_interval={tuple(interval)} must be (t_min, t_max).")
    lo, hi = (torch.tensor(float(v), dtype=torch.float32).item() for v in interval)
    return from_rae_time(hi), from_rae_time(lo)


def rae_velocity(model: nn.Module, z: torch.Tensor, t: float | torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Core velocity `[B, ...]` (float32) at core time `t` from a network in the RAE convention.

    The network gets `z` in its parameters' dtype (read from the parameters, so wrappers without `.dtype`, e.g.
    DDP, work), float32 RAE times `[B]` and the labels, and returns `.prediction` = its velocity `e - x`. A float `t`
    (a sampling grid value) is converted exactly; a `[B]` tensor in float32.
    """
    if isinstance(t, torch.Tensor):
        timesteps = to_rae_time(t.to(device=z.device, dtype=torch.float32)).expand(z.shape[0])
    else:
        timesteps = torch.full((z.shape[0],), to_rae_time(t), dtype=torch.float32, device=z.device)
    parameter = next(model.parameters(), None)
    output = model(z if parameter is None else z.to(parameter.dtype), timesteps, labels).prediction
    return from_rae_velocity(output.float())


__all__ = [
    "SHIFT_BASE_DIM",
    "from_rae_time",
    "from_rae_velocity",
    "rae_guidance_interval",
    "rae_time_shift",
    "rae_velocity",
    "shift_rae_time",
    "shift_time",
    "to_rae_time",
    "to_rae_velocity",
]
