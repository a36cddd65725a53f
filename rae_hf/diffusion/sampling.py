"""ODE samplers of rectified flow from t = 0 (noise) to t = 1 (data), with classifier-free guidance on an interval.

The samplers only see a `velocity_fn(z, t) -> v` (t a Python float holding a float32 grid value), so they work for
any space. `guided_velocity` builds that function from a conditional network, running the conditional and the
unconditional halves in one batch only where guidance is active.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

SAMPLERS = ("heun", "euler")
VelocityFn = Callable[[torch.Tensor, float], torch.Tensor]


def time_grid(num_steps: int, t_start: float = 0.0) -> list[float]:
    """`linspace(t_start, 1, num_steps + 1)` in float32 (official: from 0), as Python floats holding float32 values."""
    if num_steps < 1:
        raise ValueError(f"num_inference_steps={num_steps} must be >= 1.")
    if not 0.0 <= t_start < 1.0:
        raise ValueError(f"t_start={t_start} must be in [0, 1).")
    return torch.linspace(t_start, 1.0, num_steps + 1, dtype=torch.float32).tolist()


def _float32(value: float) -> float:
    return torch.tensor(value, dtype=torch.float32).item()


def guidance_scale_at(t: float, scale: float, interval: Sequence[float] = (0.0, 1.0)) -> float:
    """`scale` where `t < hi and (lo == 0 or t > lo)` (comparisons in float32, as official), else 1."""
    lo, hi = (_float32(v) for v in interval)
    t = _float32(t)
    return scale if t < hi and (lo == 0 or t > lo) else 1.0


def guided_velocity(
    velocity_fn: Callable[[torch.Tensor, float, torch.Tensor], torch.Tensor],
    cond: torch.Tensor,
    uncond: torch.Tensor,
    scale: float,
    interval: Sequence[float] = (0.0, 1.0),
) -> VelocityFn:
    """CFG on the velocity: `v_u + w (v_c - v_u)` with `w = guidance_scale_at(t)`; conditional only where w = 1.

    `velocity_fn(z, t, condition)` evaluates the network; `cond`/`uncond` are batched conditions (e.g. labels and
    the null label) concatenated along dim 0 when both are needed.
    """
    if len(interval) != 2 or not 0.0 <= interval[0] <= interval[1] <= 1.0:
        raise ValueError(f"guidance_interval={tuple(interval)} must be (lo, hi) with 0 <= lo <= hi <= 1.")

    def velocity(z: torch.Tensor, t: float) -> torch.Tensor:
        w = guidance_scale_at(t, scale, interval)
        if w == 1.0:
            return velocity_fn(z, t, cond)
        v_c, v_u = velocity_fn(torch.cat([z, z]), t, torch.cat([cond, uncond])).chunk(2)
        return v_u + w * (v_c - v_u)

    return velocity


@torch.no_grad()
def sample_ode(
    velocity_fn: VelocityFn,
    z: torch.Tensor,
    num_steps: int = 50,
    sampler: str = "heun",
    progress: bool = False,
    t_start: float = 0.0,
) -> torch.Tensor:
    """Integrate `dz/dt = v(z, t)` from `t_start` (0: pure noise) to 1 on the uniform grid.

    `"heun"` (official): steps 1..N-1 are Heun (Euler predictor, average of the two velocities), the last step is
    Euler (the velocity at t = 1 is not evaluated). `"euler"`: every step Euler.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler={sampler!r} must be one of {SAMPLERS}.")
    grid = time_grid(num_steps, t_start)
    for index in tqdm(range(num_steps), desc="sampling", disable=not progress, leave=False):
        t, t_next = grid[index], grid[index + 1]
        dt = t_next - t
        v = velocity_fn(z, t)
        if sampler == "euler" or index == num_steps - 1:
            z = z + dt * v
        else:
            v_next = velocity_fn(z + dt * v, t_next)
            z = z + dt * 0.5 * (v + v_next)
    return z


__all__ = ["SAMPLERS", "guidance_scale_at", "guided_velocity", "sample_ode", "time_grid"]
