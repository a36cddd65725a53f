"""ODE samplers of rectified flow from noise to data (core time, see the package docstring), with guidance on an
interval of t.

The samplers only see a `velocity_fn(z, t) -> v` (t a Python float holding a grid value), so they work for any
space. `guided_velocity` (classifier-free guidance) and `autoguided_velocity` (a weaker guide model) build that
function from conditional networks, running the extra evaluation only where guidance is active.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import pairwise

import torch
from tqdm.auto import tqdm

from .conventions import from_rae_time, shift_rae_time

SAMPLERS = ("heun", "euler")
GUIDANCE_RULES = ("jit", "dit_dh")
VelocityFn = Callable[[torch.Tensor, float], torch.Tensor]
ConditionalVelocityFn = Callable[[torch.Tensor, float, torch.Tensor], torch.Tensor]


def time_grid(num_steps: int, t_start: float = 0.0) -> list[float]:
    """`linspace(t_start, 1, num_steps + 1)` in float32 (official: from 0), as Python floats holding float32 values."""
    if num_steps < 1:
        raise ValueError(f"num_inference_steps={num_steps} must be >= 1.")
    if not 0.0 <= t_start < 1.0:
        raise ValueError(f"t_start={t_start} must be in [0, 1).")
    return torch.linspace(t_start, 1.0, num_steps + 1, dtype=torch.float32).tolist()


def rae_time_grid(num_steps: int, shift: float, t_max: float = 0.999) -> list[float]:
    """RAE stage 2's sampling grid in core time: `num_steps + 1` points, the official float32 RAE times
    `shift_rae_time(1 - linspace(0, t_max, num_steps + 1), shift)` (1.0 ... 0.00689 for sqrt(48), 49 steps), each
    turned into core time exactly (float64 `1 - t_rae`)."""
    if num_steps < 1:
        raise ValueError(f"num_inference_steps={num_steps} must be >= 1.")
    if not 0.0 < t_max < 1.0:
        raise ValueError(f"t_max={t_max} must be in (0, 1).")
    rae_times = shift_rae_time(1 - torch.linspace(0, t_max, num_steps + 1, dtype=torch.float32), shift)
    return [from_rae_time(t) for t in rae_times.tolist()]


def _float32(value: float) -> float:
    return torch.tensor(value, dtype=torch.float32).item()


def guidance_scale_at(t: float, scale: float, interval: Sequence[float] = (0.0, 1.0), rule: str = "jit") -> float:
    """The guidance weight at time `t`: `scale` inside `interval`, else 1 (no guidance). Two rules:

    - `"jit"` (JiT's official): `t < hi and (lo == 0 or t > lo)`, compared in float32;
    - `"dit_dh"` (RAE's DiT-DH): only when `scale > 1`, and `lo <= t <= hi` (both inclusive), comparing the values
      as given (pass exact bounds, e.g. `conventions.rae_guidance_interval`).
    """
    lo, hi = interval
    if rule == "jit":
        lo, hi, t = _float32(lo), _float32(hi), _float32(t)
        return scale if t < hi and (lo == 0 or t > lo) else 1.0
    if rule == "dit_dh":
        return scale if scale > 1 and lo <= t <= hi else 1.0
    raise ValueError(f"guidance rule={rule!r} must be one of {GUIDANCE_RULES}.")


def _check_interval(interval: Sequence[float]) -> None:
    if len(interval) != 2 or not 0.0 <= interval[0] <= interval[1] <= 1.0:
        raise ValueError(f"guidance_interval={tuple(interval)} must be (lo, hi) with 0 <= lo <= hi <= 1.")


def guided_velocity(
    velocity_fn: ConditionalVelocityFn,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    scale: float,
    interval: Sequence[float] = (0.0, 1.0),
    rule: str = "jit",
) -> VelocityFn:
    """CFG on the velocity: `v_u + w (v_c - v_u)` with `w = guidance_scale_at(t, scale, interval, rule)`;
    conditional only where w = 1.

    `velocity_fn(z, t, condition)` evaluates the network; `cond`/`uncond` are batched conditions (e.g. labels and
    the null label) concatenated along dim 0 (`[z; z]`, `[cond; uncond]`) when both are needed.
    """
    _check_interval(interval)

    def velocity(z: torch.Tensor, t: float) -> torch.Tensor:
        w = guidance_scale_at(t, scale, interval, rule)
        if w == 1.0:
            return velocity_fn(z, t, cond)
        v_c, v_u = velocity_fn(torch.cat([z, z]), t, torch.cat([cond, uncond])).chunk(2)
        return v_u + w * (v_c - v_u)

    return velocity


def autoguided_velocity(
    velocity_fn: ConditionalVelocityFn,
    guide_fn: ConditionalVelocityFn,
    cond: torch.Tensor,
    scale: float,
    interval: Sequence[float] = (0.0, 1.0),
    rule: str = "dit_dh",
) -> VelocityFn:
    """Autoguidance: `v_G + w (v_M - v_G)` with the main model's `v_M = velocity_fn(z, t, cond)` and the guide's
    `v_G = guide_fn(z, t, cond)` (same condition), `w` as in `guided_velocity`; the guide runs only where w != 1."""
    _check_interval(interval)

    def velocity(z: torch.Tensor, t: float) -> torch.Tensor:
        v_m = velocity_fn(z, t, cond)
        w = guidance_scale_at(t, scale, interval, rule)
        if w == 1.0:
            return v_m
        v_g = guide_fn(z, t, cond)
        return v_g + w * (v_m - v_g)

    return velocity


@torch.no_grad()
def sample_ode(
    velocity_fn: VelocityFn,
    z: torch.Tensor,
    num_steps: int | Sequence[float] = 50,
    sampler: str = "heun",
    progress: bool = False,
    t_start: float = 0.0,
) -> torch.Tensor:
    """Integrate `dz/dt = v(z, t)` from noise to data over a grid of times.

    `num_steps` is an int (the uniform `time_grid(num_steps, t_start)`, JiT's) or the grid itself (increasing
    Python floats, e.g. `rae_time_grid`; `t_start` is then unused). `"heun"` (JiT's official): steps 1..N-1 are Heun
    (Euler predictor, average of the two velocities), the last step is Euler (the velocity at the last grid point is
    never evaluated). `"euler"`: every step Euler, one evaluation each.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler={sampler!r} must be one of {SAMPLERS}.")
    grid = time_grid(num_steps, t_start) if isinstance(num_steps, int) else [float(t) for t in num_steps]
    if len(grid) < 2 or any(b <= a for a, b in pairwise(grid)):
        raise ValueError(f"the time grid must hold >= 2 increasing times, got {grid[:4]}...")
    steps = len(grid) - 1
    for index in tqdm(range(steps), desc="sampling", disable=not progress, leave=False):
        t, t_next = grid[index], grid[index + 1]
        dt = t_next - t
        v = velocity_fn(z, t)
        if sampler == "euler" or index == steps - 1:
            z = z + dt * v
        else:
            v_next = velocity_fn(z + dt * v, t_next)
            z = z + dt * 0.5 * (v + v_next)
    return z


__all__ = [
    "GUIDANCE_RULES",
    "SAMPLERS",
    "autoguided_velocity",
    "guidance_scale_at",
    "guided_velocity",
    "rae_time_grid",
    "sample_ode",
    "time_grid",
]
