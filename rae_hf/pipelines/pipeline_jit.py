"""`JiTPipeline`: class-conditional sampling of a `JiTModel` with the official ODE loop.

Heun steps with a final Euler step (or Euler throughout) on the float32 grid `linspace(0, 1, N + 1)`, the same
`max(1 - t, t_eps)` clamp as training, and classifier-free guidance on the velocity restricted to an interval of t.
Images live in [-1, 1] inside the loop; `output_type="pt"`/`"np"`/`"pil"` return [0, 1] images (clipped), `"latent"`
the raw final state.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import DiffusionPipeline
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from ..diffusion import FlowMatching, guided_velocity, sample_ode
from ..models.jit import JiTModel

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


class JiTPipeline(DiffusionPipeline):
    """`JiTPipeline(model)`; `pipe(class_labels, num_inference_steps=50, guidance_scale=w)`.

    `latents` is the state at t = 0, used as given (already multiplied by `noise_scale`). Labels `None` (with
    `batch_size`) or equal to `model.config.num_classes` sample unconditionally.
    """

    model_cpu_offload_seq = "transformer"

    def __init__(self, transformer: JiTModel):
        super().__init__()
        self.register_modules(transformer=transformer)

    def flow(self) -> FlowMatching:
        config = self.transformer.config
        return FlowMatching(prediction_type=config.prediction_type, noise_scale=config.noise_scale, t_eps=config.t_eps)

    def _labels(self, class_labels, batch_size: int | None) -> torch.Tensor:
        config = self.transformer.config
        if class_labels is None:
            return torch.full((batch_size or 1,), config.null_class, dtype=torch.long, device=self.device)
        labels = torch.as_tensor(class_labels, dtype=torch.long, device=self.device).reshape(-1)
        if batch_size is not None and labels.numel() == 1:
            labels = labels.expand(batch_size)
        if labels.numel() and (labels.min() < 0 or labels.max() > config.null_class):  # one sync, outside the loop
            raise ValueError(f"class_labels must be in [0, {config.null_class}] ({config.null_class} = unconditional).")
        return labels

    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | Sequence[int] | torch.Tensor | None = None,
        num_inference_steps: int = 50,
        sampler: str = "heun",
        guidance_scale: float = 1.0,
        guidance_interval: Sequence[float] = (0.1, 1.0),
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        batch_size: int | None = None,
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type={output_type!r} must be one of {OUTPUT_TYPES}.")
        model, config, flow = self.transformer, self.transformer.config, self.flow()
        labels = self._labels(class_labels, batch_size)
        shape = (labels.shape[0], config.num_channels, config.image_size, config.image_size)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=self.device, dtype=torch.float32)
            latents = latents * config.noise_scale
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents have shape {tuple(latents.shape)}, expected {shape}.")
        z = latents.to(self.device, torch.float32)
        dtype = model.dtype

        def velocity(z_t: torch.Tensor, t: float, condition: torch.Tensor) -> torch.Tensor:
            output = model(z_t.to(dtype), t, condition).prediction.float()
            return flow.to_velocity(output, z_t, t)

        null = torch.full_like(labels, config.null_class)
        velocity_fn = guided_velocity(velocity, labels, null, guidance_scale, guidance_interval)
        progress = not getattr(self, "_progress_bar_config", {}).get("disable", False)
        z = sample_ode(velocity_fn, z, num_inference_steps, sampler, progress=progress)

        if output_type == "latent":
            images = z
        else:
            images = ((z + 1) / 2).clamp(0, 1)
            if output_type != "pt":
                images = images.permute(0, 2, 3, 1).cpu().numpy()
                if output_type == "pil":
                    images = self.numpy_to_pil(images)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)


__all__ = ["OUTPUT_TYPES", "JiTPipeline"]
