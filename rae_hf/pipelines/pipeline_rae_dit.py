"""`RAEDiTPipeline`: class-conditional sampling of a `DiTDHModel` on normalized RAE latents, decoded by the RAE.

The sampler is RAE stage 2's: the official float32 grid `1 - linspace(0, 0.999, N + 1)` shifted by
`s = sqrt(C h w / 4096)` (or the training shift the DiT's config records, `time_shift`), integrated by the shared core
(`rae_hf.diffusion`, which works in its own time convention and calls the network in official RAE time through
`rae_velocity`). Euler is the published sampler (one network call per step: `num_inference_steps=49` is the official
50-point grid); Heun is the core's (Heun steps, a final Euler step). Guidance follows DiT-DH: on only when
`guidance_scale > 1`, at the steps whose RAE time lies in `guidance_interval = (t_min, t_max)` (both inclusive); CFG
`v_u + w (v_c - v_u)` with the null label `num_classes`, or autoguidance `v_G + w (v_M - v_G)` with a weaker
`guidance_model` given the same labels.

Saving and loading (the folder holds `model_index.json`, `transformer/`, `vae/` and a two-line
`pipeline_rae_dit.py` that imports this class from the installed `rae_hf`):

    pipe.save_pretrained("runs/rae_dit/pipeline")
    pipe = RAEDiTPipeline.from_pretrained("runs/rae_dit/pipeline")  # or rae_hf.RAEDiTPipeline
    pipe = DiffusionPipeline.from_pretrained(
        "runs/rae_dit/pipeline", custom_pipeline="pipeline_rae_dit", trust_remote_code=True
    )
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch
from diffusers import DiffusionPipeline
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from torch import nn

from ..diffusion import (
    SAMPLERS,
    autoguided_velocity,
    guided_velocity,
    rae_guidance_interval,
    rae_time_grid,
    rae_time_shift,
    rae_velocity,
    sample_ode,
)
from ..models.dit import DiTDHModel
from ..models.rae import RAEModel

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
GUIDANCE_TYPES = (None, "cfg", "autoguidance")
LOADER_FILE = "pipeline_rae_dit.py"
LOADER_SOURCE = '''"""Written by `RAEDiTPipeline.save_pretrained`: the class comes from the installed rae_hf package."""

from rae_hf.pipelines.pipeline_rae_dit import RAEDiTPipeline

__all__ = ["RAEDiTPipeline"]
'''


def images_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """`[B, 3, H, W]` images in [0, 1] -> `[B, H, W, 3]` uint8 as the official sampler: clamp, * 255, truncate."""
    return images.clamp(0, 1).mul(255).to(torch.uint8).permute(0, 2, 3, 1)


class RAEDiTPipeline(DiffusionPipeline):
    """`RAEDiTPipeline(transformer=dit, vae=rae)`; `pipe(class_labels, num_inference_steps=49, ...)`.

    `transformer` is a `DiTDHModel` over the latents of `vae`, an `RAEModel` with latent statistics (its `decode`
    de-normalizes with them). Output images: `"pt"` float `[B, 3, H, W]` in [0, 1]; `"np"` uint8 `[B, H, W, 3]` and
    `"pil"` truncated to 8 bits as the official sampler; `"latent"` the final normalized latent before decoding.
    """

    model_cpu_offload_seq = "transformer->vae"

    def __init__(self, transformer: DiTDHModel, vae: RAEModel):
        super().__init__()
        self.register_modules(transformer=transformer, vae=vae)
        # diffusers names a component's library by its folder when diffusers has a pipeline folder of that name
        # (`models/dit` -> diffusers' "dit"): record the full module path so that loading imports rae_hf's class
        for name, module in (("transformer", transformer), ("vae", vae)):
            self.register_to_config(**{name: (type(module).__module__, type(module).__name__)})
        latent = (vae.config.latent_channels, vae.config.latent_grid_size, vae.config.latent_grid_size)
        if tuple(transformer.config.latent_shape) != latent:
            raise ValueError(
                f"The transformer denoises latents {tuple(transformer.config.latent_shape)} but the RAE makes {latent}."
            )

    def default_time_shift(self) -> float:
        """The shift the transformer was trained with (`config.time_shift`), else RAE's for its latent size,
        `sqrt(C h w / 4096)` (sqrt(48) for 768 x 16 x 16)."""
        if self.transformer.config.time_shift is not None:
            return float(self.transformer.config.time_shift)
        channels, height, width = self.transformer.config.latent_shape
        return rae_time_shift(channels * height * width)

    def _labels(self, class_labels, batch_size: int | None) -> torch.Tensor:
        null = self.transformer.config.null_class
        if class_labels is None:
            return torch.full((batch_size or 1,), null, dtype=torch.long, device=self.device)
        labels = torch.as_tensor(class_labels, dtype=torch.long, device=self.device).reshape(-1)
        if batch_size is not None and labels.numel() == 1:
            labels = labels.expand(batch_size)
        if labels.numel() and (labels.min() < 0 or labels.max() > null):  # one sync, outside the loop
            raise ValueError(f"class_labels must be in [0, {null}] ({null} = the null class).")
        return labels

    def _velocity_fn(self, labels, guidance, guidance_scale, guidance_interval, guidance_model):
        """The core velocity function of the chosen guidance (see the module docstring)."""
        if guidance not in GUIDANCE_TYPES:
            raise ValueError(f"guidance={guidance!r} must be one of {GUIDANCE_TYPES}.")
        if guidance is None and guidance_scale != 1.0:
            raise ValueError(f"guidance_scale={guidance_scale} needs guidance='cfg' or 'autoguidance'.")
        if (guidance == "autoguidance") != (guidance_model is not None):
            raise ValueError("guidance='autoguidance' needs a guidance_model, and a guidance_model needs it.")
        interval = rae_guidance_interval(guidance_interval)

        def model_velocity(model: nn.Module):
            return lambda z, t, condition: rae_velocity(model, z, t, condition)

        velocity = model_velocity(self.transformer)
        if guidance == "autoguidance":
            guide = model_velocity(guidance_model)
            return autoguided_velocity(velocity, guide, labels, guidance_scale, interval, rule="dit_dh")
        null = torch.full_like(labels, self.transformer.config.null_class)
        scale = guidance_scale if guidance == "cfg" else 1.0
        return guided_velocity(velocity, labels, null, scale, interval, rule="dit_dh")

    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | Sequence[int] | torch.Tensor | None = None,
        num_inference_steps: int = 49,
        sampler: str = "euler",
        guidance: str | None = None,
        guidance_scale: float = 1.0,
        guidance_interval: Sequence[float] = (0.0, 1.0),
        guidance_model: nn.Module | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        progress: bool | None = None,
        time_shift: float | None = None,
        batch_size: int | None = None,
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """Sample one image per label (`class_labels` None or `num_classes`: unconditional, `batch_size` of them).

        Args:
            num_inference_steps: Euler steps = network calls per sample for Euler (49 = the official 50-point grid).
            sampler: `"euler"` (published) or `"heun"`.
            guidance: None, `"cfg"` or `"autoguidance"` (with `guidance_model`, a `DiTDHModel` on the same latents).
            guidance_scale / guidance_interval: `w` and `(t_min, t_max)` in official RAE time (t = 0 data).
            latents: the initial noise `[B, C, h, w]` in normalized latent space (default `N(0, I)` from `generator`).
            output_type: `"pil"`, `"np"`, `"pt"` or `"latent"` (see the class docstring).
            progress: show a progress bar (default: the pipeline's progress-bar setting).
            time_shift: the grid's shift `s` (default `default_time_shift()`: the training one the DiT's config
                records, else the one of its latent size).
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type={output_type!r} must be one of {OUTPUT_TYPES}.")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler={sampler!r} must be one of {SAMPLERS}.")
        if output_type != "latent" and not self.vae.config.normalize_latents:
            raise ValueError(
                "The RAE has no latent statistics, so the latents cannot be de-normalized: compute them with "
                "`python run_rae.py <recipe> --compute_latent_stats true` (or sample with output_type='latent')."
            )
        labels = self._labels(class_labels, batch_size)
        shape = (labels.shape[0], *self.transformer.config.latent_shape)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=self.device, dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents have shape {tuple(latents.shape)}, expected {shape}.")
        velocity = self._velocity_fn(labels, guidance, guidance_scale, guidance_interval, guidance_model)
        if progress is None:
            progress = not getattr(self, "_progress_bar_config", {}).get("disable", False)
        grid = rae_time_grid(num_inference_steps, time_shift or self.default_time_shift())
        z = sample_ode(velocity, latents.to(self.device, torch.float32), grid, sampler, progress=progress)

        if output_type == "latent":
            images = z
        else:
            images = self.vae.decode(z.to(self.vae.dtype)).reconstruction.float().clamp(0, 1)
            if output_type != "pt":
                images = images_to_uint8(images).cpu().numpy()
                if output_type == "pil":
                    images = [Image.fromarray(image) for image in images]
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """`DiffusionPipeline.save_pretrained`, plus the loader file `DiffusionPipeline.from_pretrained` needs."""
        os.makedirs(save_directory, exist_ok=True)
        with open(os.path.join(save_directory, LOADER_FILE), "w") as file:
            file.write(LOADER_SOURCE)
        super().save_pretrained(save_directory, *args, **kwargs)


def make_sample_fn(
    pipe: RAEDiTPipeline, seed: int = 0, autocast_dtype: torch.dtype | None = None, **call_kwargs
) -> Callable[[int, torch.Tensor | None], torch.Tensor]:
    """A `rae_hf.evaluation.SampleFn` over the pipeline: `sample_fn(n, labels)` -> `[n, 3, H, W]` float images in
    [0, 1] (labels None: the null class), sampled with `call_kwargs` (`num_inference_steps`, `guidance`, ...) and no
    progress bar. The initial noise comes from one generator seeded with `seed` on the pipeline's device (give each
    process its own seed); `autocast_dtype` runs the networks under autocast."""
    from ..evaluation.generation import pipeline_sample_fn  # Inception and metrics: imported when evaluating

    return pipeline_sample_fn(pipe, seed, autocast_dtype, progress=False, **call_kwargs)


def guidance_sweep(
    pipe: RAEDiTPipeline,
    guidance_scales: Sequence[float],
    num_samples: int,
    batch_size: int,
    guidance: str = "cfg",
    guidance_interval: Sequence[float] = (0.0, 1.0),
    guidance_model: nn.Module | None = None,
    num_inference_steps: int = 49,
    sampler: str = "euler",
    seed: int = 0,
    autocast_dtype: torch.dtype | None = None,
    time_shift: float | None = None,
    accelerator=None,
    save_dir: str | os.PathLike | None = None,
    **evaluate_kwargs,
) -> list[dict]:
    """gFID/IS of `num_samples` class-balanced samples per guidance scale (`evaluate_guidance_scales`).

    Every scale starts from the same noise (`seed` + the process index), so the rows differ by guidance only; a scale
    <= 1 samples unguided. `save_dir` keeps each scale's PNGs and ADM `.npz` in `save_dir/guidance_<w>`,
    `results_path` the rows as JSON; `evaluate_kwargs` go to `evaluate_generation` (`reference`,
    `inception_weights`, `feature`, ...). Returns one row `{"guidance_scale": w, "fid", "inception_score", ...}` per
    scale; every process must call it.
    """
    from ..evaluation.generation import evaluate_guidance_scales  # Inception and metrics: imported when evaluating

    process_index = accelerator.process_index if accelerator is not None else 0

    def sample_fn_for(scale: float):
        guided = scale > 1
        return make_sample_fn(
            pipe,
            seed + process_index,
            autocast_dtype,
            num_inference_steps=num_inference_steps,
            sampler=sampler,
            guidance=guidance if guided else None,
            guidance_scale=scale if guided else 1.0,
            guidance_interval=guidance_interval,
            guidance_model=guidance_model if guided else None,
            time_shift=time_shift,
        )

    return evaluate_guidance_scales(
        sample_fn_for,
        guidance_scales,
        num_samples,
        batch_size,
        accelerator=accelerator,
        save_dir=save_dir,
        num_classes=pipe.transformer.config.num_classes or None,
        **evaluate_kwargs,
    )


__all__ = ["GUIDANCE_TYPES", "OUTPUT_TYPES", "RAEDiTPipeline", "guidance_sweep", "images_to_uint8", "make_sample_fn"]
