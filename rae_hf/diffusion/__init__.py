"""Flow matching shared by the diffusion models of rae_hf (JiT in pixels; later DiT on RAE latents).

Nothing here knows about images: time sampling, noising, prediction/loss parametrizations (`FlowMatching`),
condition dropout (`drop_labels`) and the Euler/Heun ODE samplers with interval classifier-free guidance.
"""

from .flow_matching import TARGETS, FlowMatching
from .guidance import drop_labels
from .sampling import SAMPLERS, guidance_scale_at, guided_velocity, sample_ode, time_grid

__all__ = [
    "SAMPLERS",
    "TARGETS",
    "FlowMatching",
    "drop_labels",
    "guidance_scale_at",
    "guided_velocity",
    "sample_ode",
    "time_grid",
]
