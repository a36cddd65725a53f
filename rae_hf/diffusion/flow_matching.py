"""Rectified-flow training rules of JiT, independent of what the samples are (pixels, latents, anything).

Convention (the JiT paper's): `t` in [0, 1], t = 1 is clean data; `z_t = t * x + (1 - t) * e` with
`e = noise_scale * N(0, I)`; the velocity is `v = dz/dt = x - e`. A network may output the clean sample (`"x"`,
the paper's default), the noise (`"eps"`) or the velocity (`"v"`); the loss may be taken on any of the three. Each
conversion divides by `t` or `1 - t`, clamped from below by `t_eps` as the official code does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TARGETS = ("x", "eps", "v")


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
    """

    prediction_type: str = "x"
    loss_type: str = "v"
    noise_scale: float = 1.0
    t_eps: float = 0.05
    p_mean: float = -0.8
    p_std: float = 0.8

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

    # ----- training inputs ---------------------------------------------------------------------------------------
    def sample_time(self, batch: int, device: torch.device | str, generator: torch.Generator | None = None):
        """`[batch]` float32 times from the logit-normal distribution."""
        s = torch.randn(batch, device=device, generator=generator) * self.p_std + self.p_mean
        return torch.sigmoid(s)

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
        """Per-example mean squared error `[B]` in `loss_type` space (v: both sides clamped as the official code)."""
        output = output.float()
        if self.loss_type == "v":
            target = (x - z) / self._one_minus_t(_expand(t, z))
            prediction = self.to_velocity(output, z, t)
        elif self.loss_type == "x":
            target, prediction = x, self.to_clean(output, z, t)
        else:
            target, prediction = noise, self.to_noise(output, z, t)
        return (prediction - target).pow(2).flatten(1).mean(dim=1)


__all__ = ["TARGETS", "FlowMatching"]
