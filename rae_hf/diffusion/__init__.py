"""Flow matching shared by the diffusion models of rae_hf (JiT in pixels, DiT-DH on RAE latents).

Nothing here knows about images: time sampling and shift, noising, prediction/loss parametrizations
(`FlowMatching`), condition dropout (`drop_labels`) and the Euler/Heun ODE samplers with classifier-free guidance or
autoguidance on an interval of t.

The one time convention of this package (JiT's): `t` in [0, 1], **t = 1 is clean data, t = 0 pure noise**;
`z_t = t * x + (1 - t) * e`, velocity `v = dz_t/dt = x - e`; samplers integrate t upwards. Official RAE stage 2 runs
the other way (t_rae = 1 - t, velocity e - x): `conventions` converts at the model boundary (`to_rae_time`,
`to_rae_velocity`, `rae_velocity` for a network called in RAE time) and holds RAE's time shift; every name
containing `rae` takes or returns official RAE time.
"""

from .conventions import (
    from_rae_time,
    from_rae_velocity,
    rae_guidance_interval,
    rae_time_shift,
    rae_velocity,
    shift_rae_time,
    shift_time,
    to_rae_time,
    to_rae_velocity,
)
from .flow_matching import TARGETS, TIME_DISTRIBUTIONS, FlowMatching
from .guidance import drop_labels
from .sampling import (
    GUIDANCE_RULES,
    SAMPLERS,
    autoguided_velocity,
    guidance_scale_at,
    guided_velocity,
    rae_time_grid,
    sample_ode,
    time_grid,
)

__all__ = [
    "GUIDANCE_RULES",
    "SAMPLERS",
    "TARGETS",
    "TIME_DISTRIBUTIONS",
    "FlowMatching",
    "autoguided_velocity",
    "drop_labels",
    "from_rae_time",
    "from_rae_velocity",
    "guidance_scale_at",
    "guided_velocity",
    "rae_guidance_interval",
    "rae_time_grid",
    "rae_time_shift",
    "rae_velocity",
    "sample_ode",
    "shift_rae_time",
    "shift_time",
    "time_grid",
    "to_rae_time",
    "to_rae_velocity",
]
