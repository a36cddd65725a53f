"""Rectified-flow training rules (JiT's, and RAE stage 2's), independent of what the samples are.

Time convention: the package docstring (t = 1 is clean data, `z_t = t x + (1 - t) e`, `v = x - e`). A network may
output the clean sample (`"x"`, JiT's default), the noise (`"eps"`) or the velocity (`"v"`, RAE stage 2); the loss may
be taken on any of the three. Each conversion divides by `t` or `1 - t`, clamped from below by `t_eps` as the official
JiT code does; a velocity output with the velocity loss divides by nothing (its target is exactly `x - e`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .conventions import from_rae_time, shift_time

TARGETS = ("x", "eps", "v")
TIME_DISTRIBUTIONS = ("logit_normal", "uniform")


def _expand(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`[B]` (or scalar) times -> shape broadcastable against `like` (`[B, 1, 1, ...]`), float32."""
    t = torch.as_tensor(t, dtype=torch.float32, device=like.device)
    if t.ndim == 0:
        t = t.expand(like.shape[0])
    return t.reshape(-1, *([1] * (like.ndim - 1)))


@dataclass
class FlowMatching:
    """Time sampling, noising, prediction conversions and the training loss.

    Args:
        prediction_type: what the network outputs: `"x"` (clean sample), `"eps"` (noise) or `"v"` (velocity).
        loss_type: the space of the squared error: `"v"` (paper default), `"x"` or `"eps"`.
        noise_scale: std of the noise (JiT: image_size / 256).
        t_eps: lower clamp of `1 - t` (and of `t` where `eps` output is divided by it): 0.05.
        p_mean / p_std: `t = sigmoid(s)`, `s ~ N(p_mean, p_std^2)` (logit-normal; JiT: -0.8, 0.8).
        time_distribution: `"logit_normal"` (above) or `"uniform"`.
        time_range: `(lo, hi)` the times are drawn in, before the shift: uniform on it, or the logit-normal
            truncated to it by the inverse CDF (the full `(0, 1)` draws `sigmoid(N)` directly, as JiT).
        time_shift: RAE's shift `s` (`conventions.rae_time_shift`), applied after drawing: `t / (s - (s - 1) t)`;
            1 (JiT) leaves the times as drawn.
    """

    prediction_type: str = "x"
    loss_type: str = "v"
    noise_scale: float = 1.0
    t_eps: float = 0.05
    p_mean: float = -0.8
    p_std: float = 0.8
    time_distribution: str = "logit_normal"
    time_range: tuple[float, float] = (0.0, 1.0)
    time_shift: float = 1.0

    @classmethod
    def rae_stage2(cls, time_dist_type: str = "logit-normal_0_1", time_shift: float = 1.0, t_max: float = 0.999):
        """The official stage-2 objective: velocity output and loss, RAE time drawn in `[0, t_max]` from the official
        `time_dist_type` (`"uniform"` or `"logit-normal_<mean>_<std>"`, e.g. `"logit-normal_0_1"`), then shifted."""
        name, *params = time_dist_type.split("_")
        if name == "uniform" and not params:
            kwargs = {"time_distribution": "uniform"}
        elif name == "logit-normal" and len(params) == 2:  # logit(1 - t) = -logit(t): the mean changes sign
            kwargs = {"time_distribution": "logit_normal", "p_mean": -float(params[0]), "p_std": float(params[1])}
        else:
            raise ValueError(f"time_dist_type={time_dist_type!r} must be 'uniform' or 'logit-normal_<mean>_<std>'.")
        time_range = (from_rae_time(t_max), 1.0)
        return cls(prediction_type="v", loss_type="v", time_range=time_range, time_shift=time_shift, **kwargs)

    def __post_init__(self) -> None:
        for name in ("prediction_type", "loss_type"):
            if getattr(self, name) not in TARGETS:
                raise ValueError(f"{name}={getattr(self, name)!r} must be one of {TARGETS}.")
        if self.noise_scale <= 0:
            raise ValueError(f"noise_scale={self.noise_scale} must be positive.")
        if not 0 < self.t_eps < 1:
            raise ValueError(f"t_eps={self.t_eps} must be in (0, 1).")
        if self.p_std <= 0:
            raise ValueError(f"p_std={self.p_std} must be positive.")
        if self.time_distribution not in TIME_DISTRIBUTIONS:
            raise ValueError(f"time_distribution={self.time_distribution!r} must be one of {TIME_DISTRIBUTIONS}.")
        self.time_range = tuple(float(v) for v in self.time_range)
        if len(self.time_range) != 2 or not 0.0 <= self.time_range[0] < self.time_range[1] <= 1.0:
            raise ValueError(f"time_range={self.time_range} must be (lo, hi) with 0 <= lo < hi <= 1.")
        if self.time_shift <= 0:
            raise ValueError(f"time_shift={self.time_shift} must be positive.")
        # the truncated logit-normal's bounds Phi(a), Phi(b) (a/b: the standardized logits of the range), fixed
        logits = torch.logit(torch.tensor(self.time_range, dtype=torch.float64))
        self._cdf_range = tuple(torch.special.ndtr((logits - self.p_mean) / self.p_std).tolist())

    # ----- training inputs ---------------------------------------------------------------------------------------
    def sample_time(self, batch: int, device: torch.device | str, generator: torch.Generator | None = None):
        """`[batch]` float32 times from `time_distribution` on `time_range`, then shifted by `time_shift`."""
        lo, hi = self.time_range
        if self.time_distribution == "uniform":
            t = lo + (hi - lo) * torch.rand(batch, device=device, generator=generator)
        elif (lo, hi) == (0.0, 1.0):
            t = torch.sigmoid(torch.randn(batch, device=device, generator=generator) * self.p_std + self.p_mean)
        else:  # truncated: u ~ U(Phi(a), Phi(b)), t = sigmoid(mean + std * Phi^-1(u))
            a, b = self._cdf_range
            u = a + (b - a) * torch.rand(batch, device=device, generator=generator)
            t = torch.sigmoid(self.p_mean + self.p_std * torch.special.ndtri(u)).clamp(lo, hi)
        return t if self.time_shift == 1.0 else shift_time(t, self.time_shift)

    def sample_noise(self, like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """`noise_scale * N(0, I)` with the shape of `like` (float32)."""
        noise = torch.randn(like.shape, device=like.device, dtype=torch.float32, generator=generator)
        return noise * self.noise_scale

    def add_noise(self, x: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """`z_t = t * x + (1 - t) * noise`."""
        t = _expand(t, x)
        return t * x + (1 - t) * noise

    # ----- conversions between network outputs ------------------------------------------------------------------
    def _one_minus_t(self, t: torch.Tensor) -> torch.Tensor:
        return (1 - t).clamp_min(self.t_eps)

    def to_velocity(self, output: torch.Tensor, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Velocity implied by the network output at `(z, t)`."""
        t = _expand(t, z)
        if self.prediction_type == "x":
            return (output - z) / self._one_minus_t(t)
        if self.prediction_type == "eps":
            return (z - output) / t.clamp_min(self.t_eps)
        return output

    def to_clean(self, output: torch.Tensor, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Clean sample implied by the network output at `(z, t)`."""
        t = _expand(t, z)
        if self.prediction_type == "x":
            return output
        if self.prediction_type == "eps":
            return (z - (1 - t) * output) / t.clamp_min(self.t_eps)
        return z + (1 - t) * output

    def to_noise(self, output: torch.Tensor, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Noise implied by the network output at `(z, t)`."""
        t = _expand(t, z)
        if self.prediction_type == "x":
            return (z - t * output) / self._one_minus_t(t)
        if self.prediction_type == "eps":
            return output
        return z - t * output

    # ----- loss ---------------------------------------------------------------------------------------------------
    def loss(
        self, output: torch.Tensor, x: torch.Tensor, noise: torch.Tensor, z: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """Per-example mean squared error `[B]` (mean over all but the batch dimension) in `loss_type` space. The v-loss
        of an x/eps output clamps both sides as JiT's code; of a v output it is exactly `(output - (x - noise))^2`."""
        output = output.float()
        if self.loss_type == "v" and self.prediction_type == "v":
            target, prediction = x - noise, output
        elif self.loss_type == "v":
            target = (x - z) / self._one_minus_t(_expand(t, z))
            prediction = self.to_velocity(output, z, t)
        elif self.loss_type == "x":
            target, prediction = x, self.to_clean(output, z, t)
        else:
            target, prediction = noise, self.to_noise(output, z, t)
        return (prediction - target).pow(2).flatten(1).mean(dim=1)


__all__ = ["TARGETS", "TIME_DISTRIBUTIONS", "FlowMatching"]
