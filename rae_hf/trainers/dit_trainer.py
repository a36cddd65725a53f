"""RAE stage 2: a DiT-DH trained by flow matching on the normalized latents of a frozen RAE (the published objective).

- Objective, in RAE time (t = 0 data, t = 1 noise): `x_t = (1 - t) x + t e`, target `v = e - x`, squared error
  averaged over C, h, w and the batch. t is drawn logit-normal(0, 1) (or uniform) in [0, time_max = 0.999] and
  shifted by `s = sqrt(dim / 4096)` (dim = C*h*w): `t <- s t / (1 + (s - 1) t)`; another shift (`--time_shift_dim`)
  is saved as the model's `config.time_shift`, the pipeline's sampling default. Labels are dropped to the null class
  with probability 0.1 (CFG). The rules live in `rae_hf.diffusion`; this trainer only wires them.
- Latents: a batch carries either `latents` (read from a `LatentCache`) or `pixel_values`, encoded here on the fly
  by the frozen RAE in fp32 (never under autocast), whose latent statistics are required.
- Optimizer and schedule: AdamW (0.9, 0.95), wd 0, grad clip 1.0; `published_lr_schedule`: a `LambdaLR` built from
  the arguments (warm-up, constant, linear decay to `min_lr`, constant), so a resume continues it exactly.
- EMA 0.9995 every step (`ema.safetensors` in checkpoints; copied into the model at the end: what is published).
- Randomness of a step (label dropout, t, noise) comes from a generator seeded by (seed, step, micro-batch,
  process), and the flips of the data from the per-sample seeded RNG: a resumed run draws what the uninterrupted
  run drew, and the cached and on-the-fly paths give the same batches.
- bf16 (`--bf16`) autocasts the DiT only; the shared non-finite guard stops a run at the first NaN/inf loss with the
  last finite checkpoint named (users report late bf16 NaNs in official runs; fp32 is the default, as upstream).
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from ..callbacks import EMACallback
from ..diffusion import FlowMatching, drop_labels, rae_time_shift, rae_velocity
from ..hub import COMMON_TRAINING_KEYS, card_model_id, model_card, recipe_rows
from ..models.dit import DiTDHModel
from ..models.rae import RAEModel
from .base_trainer import BaseTrainer, TrainingValues
from .dit_callbacks import DiTSamplesCallback
from .dit_config import DiTTrainingArguments
from .step_rng import StepRNG

logger = logging.getLogger(__name__)

__all__ = ["DiTTrainer", "PublishedLRSchedule", "require_latent_statistics"]


def require_latent_statistics(rae: RAEModel, name: str | None = None) -> None:
    """Refuse an RAE without latent statistics (the DiT trains on normalized latents), naming the command that
    computes them."""
    default = bool(rae.latents_mean.eq(0).all()) and bool(rae.latents_var.eq(1).all())
    if rae.config.normalize_latents and not default:
        return
    name = name or rae.config.name_or_path or "<your RAE>"
    raise ValueError(
        f"The RAE {name} has no latent statistics (normalize_latents={rae.config.normalize_latents}, mean/var "
        f"{'all 0/1' if default else 'set'}): stage 2 trains on latents standardized per channel and position. "
        f"Compute them over the training images first:\n  python run_rae.py --model_name_or_path {name} "
        "--compute_latent_stats --train_dir <training images> (or --dataset_name <dataset>) "
        f"--output_dir {name.rstrip('/')}-stats\nthen pass --rae_name_or_path {name.rstrip('/')}-stats."
    )


class PublishedLRSchedule:
    """lr factor of the official stage-2 schedule (steps): `step / warmup` during the warm-up, 1 until
    `decay_start`, linear to `final` at `decay_end`, `final` after. Picklable (saved with the scheduler)."""

    def __init__(self, warmup: float, decay_start: float, decay_end: float, final: float):
        self.warmup, self.decay_start, self.decay_end, self.final = warmup, decay_start, decay_end, final

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return step / self.warmup
        if step < self.decay_start:
            return 1.0
        if step >= self.decay_end:
            return self.final
        return 1.0 - (1.0 - self.final) * (step - self.decay_start) / (self.decay_end - self.decay_start)


class DiTTrainer(BaseTrainer):
    """Trains a `DiTDHModel` on `{"latents" | "pixel_values", "labels"?}` batches (see the module docstring).

    Args:
        rae: the frozen RAE: encodes `pixel_values` batches and decodes the sample grid / gFID samples (None: a
            latent-only run without either).
        guidance_model: the guide network of autoguidance for in-training samples (`--guidance autoguidance`).
        class_names: names written beside the rows of the sample grid.
    """

    args: DiTTrainingArguments

    def __init__(
        self,
        model: DiTDHModel,
        args: DiTTrainingArguments,
        rae: RAEModel | None = None,
        guidance_model: DiTDHModel | None = None,
        class_names: list[str] | None = None,
        **kwargs,
    ):
        super().__init__(model=model, args=args, **kwargs)
        config = model.config
        self.rae = rae
        if rae is not None:
            require_latent_statistics(rae)
            shape = (rae.config.latent_channels, rae.config.latent_grid_size, rae.config.latent_grid_size)
            if shape != tuple(config.latent_shape):
                raise ValueError(f"The RAE's latents are {shape}; the DiT expects {tuple(config.latent_shape)}.")
            rae.to(args.device).eval().requires_grad_(False)
        self.null_class = config.null_class
        self.conditional = config.num_classes > 0
        self.dropout = config.class_dropout_prob if args.class_dropout_prob is None else args.class_dropout_prob
        dim = args.time_shift_dim or math.prod(config.latent_shape)
        self.time_shift = rae_time_shift(dim, args.time_shift_base)
        # saved with the model: the pipeline samples on the training shift (None: the latent shape's default)
        derived = rae_time_shift(math.prod(config.latent_shape))
        config.time_shift = None if math.isclose(self.time_shift, derived) else self.time_shift
        self.flow = FlowMatching.rae_stage2(args.time_dist_type, self.time_shift, args.time_max)
        if self.time_shift < 1:
            logger.warning(
                "Time shift sqrt(%d / %g) = %.3f < 1: t moves towards the data (the official sampler refuses shifts "
                "below 1; --time_shift_dim %d gives none).",
                dim,
                args.time_shift_base,
                self.time_shift,
                round(args.time_shift_base),
            )
        self.ema = None
        if args.ema_decay > 0:
            self.ema = self.add_ema(EMACallback(args.ema_decay, "ema", apply_at_train_end=args.ema_apply_at_end))
        if rae is not None:
            self.samples = DiTSamplesCallback(self, rae, self.ema, guidance_model, class_names)
            self.add_callback(self.samples)
            self.register_state("image_evaluation", self.samples)
        self._steps_per_epoch: int | None = None
        self.step_rng = StepRNG(args.seed, args.process_index)

    # ----- schedule ---------------------------------------------------------------------------------------------
    def on_training_values(self, values: TrainingValues, sized: bool) -> None:
        self._steps_per_epoch = values.num_update_steps_per_epoch if sized else None

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        """`published_lr_schedule`: `PublishedLRSchedule` with epochs converted to optimizer steps; else transformers'
        `lr_scheduler_type`."""
        if self.lr_scheduler is None and self.args.published_lr_schedule:
            if self._steps_per_epoch is None:
                raise ValueError("The published lr schedule counts epochs: it needs a dataset with a length.")
            args, per_epoch = self.args, self._steps_per_epoch
            schedule = PublishedLRSchedule(
                args.lr_warmup_epochs * per_epoch,
                args.lr_decay_start_epochs * per_epoch,
                args.lr_decay_end_epochs * per_epoch,
                args.min_lr / args.learning_rate,
            )
            self.lr_scheduler = LambdaLR(optimizer or self.optimizer, schedule)
            self._created_lr_scheduler = True
        return super().create_scheduler(num_training_steps, optimizer)

    # ----- one step ---------------------------------------------------------------------------------------------
    def latents(self, inputs: dict) -> torch.Tensor:
        """The batch's normalized latents: cached ones as they are, images encoded by the frozen RAE in fp32."""
        if "latents" in inputs:
            return inputs["latents"].float()
        if self.rae is None:
            raise ValueError("Image batches need the frozen RAE (rae=...) to encode them, or use a latent cache.")
        images = inputs["pixel_values"].float()
        with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
            return self.rae.encode(images).latents.float()

    def diffusion_loss(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Per-example velocity loss `[B]` of normalized latents `x` (label dropout in training mode)."""
        batch = x.shape[0]
        if labels is None or not self.conditional:
            labels = torch.full((batch,), self.null_class, dtype=torch.long, device=x.device)
        generator = self.step_rng(self.state.global_step, x.device)
        if model.training:
            labels = drop_labels(labels, self.null_class, self.dropout, generator)
        t = self.flow.sample_time(batch, x.device, generator)  # core time (1 = data), shifted
        noise = self.flow.sample_noise(x, generator)
        z = self.flow.add_noise(x, noise, t)
        # the network runs in the official RAE time (t_rae = 1 - t) and returns the RAE velocity e - x
        velocity = rae_velocity(model, z, t, labels)
        return self.flow.loss(velocity, x, noise, z, t)

    def compute_loss(self, model: nn.Module, inputs: dict, return_outputs: bool = False, num_items_in_batch=None):
        latents = self.latents(inputs)
        if model.training:
            self.record_images(latents.shape[0], skipped=inputs.get("num_skipped"))
        loss = self.diffusion_loss(model, latents, inputs.get("labels")).mean()
        return (loss, None) if return_outputs else loss

    # ----- publishing -------------------------------------------------------------------------------------------
    def model_card_text(self, dataset: str, metrics: dict) -> str:
        model = self.accelerator.unwrap_model(self.model)
        config, args = model.config, self.args
        params = sum(p.numel() for p in model.parameters()) / 1e6
        rae = self.rae.config.name_or_path if self.rae is not None else "path/to/the/rae"
        labels = f"[i % {config.num_classes} for i in range(4)]" if config.num_classes else "None"
        usage = [
            "from rae_hf import RAEDiTPipeline",
            "from rae_hf.models.dit import DiTDHModel",
            "from rae_hf.models.rae import RAEModel",
            f"dit = DiTDHModel.from_pretrained({card_model_id(args)!r}).eval()",
            f"pipe = RAEDiTPipeline(transformer=dit, vae=RAEModel.from_pretrained({rae!r}).eval())",
            f"images = pipe({labels}, batch_size=4, num_inference_steps=49).images",
        ]
        parts = [
            ("parameters", f"{params:.1f}M"),
            ("latents", f"{tuple(config.latent_shape)} of `{rae}` (normalized)"),
            ("objective", f"velocity loss, {args.time_dist_type} t with shift {self.time_shift:.3f}"),
            ("weights", f"EMA {args.ema_decay}"),
        ]
        return model_card(
            f"DiT-DH ({config.hidden_size}x{config.num_hidden_layers} + head {config.head_hidden_size}x"
            f"{config.head_num_layers}) on RAE latents {tuple(config.latent_shape)}",
            "A DiT-DH (RAE stage 2, arXiv 2510.11690) trained with rae_hf in the latent space of an RAE.",
            usage,
            ["rae", "dit-dh", "diffusion", "latent-diffusion", "image-generation"],
            parts=parts,
            settings=recipe_rows(args, (*COMMON_TRAINING_KEYS, "ema_decay", "time_dist_type")),
            metrics=metrics,
            dataset=dataset,
        )
