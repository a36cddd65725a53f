"""JiT training: x-prediction with the v-loss on noisy pixels (`rae_hf.diffusion.FlowMatching`), label dropout for
CFG, two EMAs, linear warm-up in epochs then a constant lr, in-training samples and generation FID.

Where things live:
- the model (`model.safetensors`): raw weights in checkpoints; `save_model()` after training publishes the first EMA
  (0.9999), copied into the model when training ends (`ema_apply_at_end`).
- `ema1.safetensors` / `ema2.safetensors`: the two EMAs (`EMACallback`s, initialised from the initial weights and
  updated after every optimizer step with a fixed decay), restored on resume like the optimizer and the schedule.
- Randomness of a step (t, noise, label dropout) comes from a generator seeded by (seed, step, micro-batch, process),
  so a resumed run draws exactly what the uninterrupted run drew.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.optim.lr_scheduler import LambdaLR

from ..callbacks import EMACallback
from ..diffusion import FlowMatching, drop_labels
from ..hub import COMMON_TRAINING_KEYS, card_model_id, model_card, recipe_rows
from ..models.jit import JiTModel
from .base_trainer import BaseTrainer, TrainingValues
from .jit_callbacks import BestLossCallback, JiTSamplesCallback
from .jit_config import JiTTrainingArguments
from .step_rng import StepRNG


class _WarmupThenConstant:
    """lr factor `min(1, step / warmup_steps)` (official: set every iteration from 0); picklable for checkpoints."""

    def __init__(self, warmup_steps: float):
        self.warmup_steps = warmup_steps

    def __call__(self, step: int) -> float:
        return 1.0 if step >= self.warmup_steps else step / self.warmup_steps


@contextlib.contextmanager
def _own_class(model: nn.Module) -> Iterator[None]:
    """FSDP2 turns the model's class into a generated `FSDP<Name>` subclass; `save_pretrained` under it would write
    torch's FSDP source files as the remote code and `auto_map` to them. Save with the model's own class."""
    generated = type(model)
    if isinstance(model, FSDPModule):
        model.__class__ = next(c for c in generated.__mro__ if not issubclass(c, FSDPModule))
    try:
        yield
    finally:
        model.__class__ = generated


class JiTTrainer(BaseTrainer):
    """Trains a `JiTModel` on `{"pixel_values": [0, 1] images, "labels"?}` batches (no labels: unconditional)."""

    args: JiTTrainingArguments

    def __init__(self, model: JiTModel, args: JiTTrainingArguments, **kwargs):
        super().__init__(model=model, args=args, **kwargs)
        if args.compile_blocks:
            model.compile_blocks()
        config = model.config
        self.flow = FlowMatching(
            prediction_type=args.prediction_type or config.prediction_type,
            loss_type=args.loss_type,
            noise_scale=args.noise_scale if args.noise_scale is not None else config.noise_scale,
            t_eps=args.t_eps if args.t_eps is not None else config.t_eps,
            p_mean=args.p_mean,
            p_std=args.p_std,
        )
        if args.prediction_type is not None and args.prediction_type != config.prediction_type:
            config.prediction_type = args.prediction_type  # samplers read it from the saved config
        self.null_class = config.null_class
        self.conditional = config.num_classes > 0 and not args.unconditional
        self.ema1 = self.ema2 = None
        if args.ema_decay > 0:
            self.ema1 = self.add_ema(EMACallback(args.ema_decay, "ema1", apply_at_train_end=args.ema_apply_at_end))
        if args.ema_decay2 > 0:
            self.ema2 = self.add_ema(EMACallback(args.ema_decay2, "ema2", apply_at_train_end=False))
        self.samples = JiTSamplesCallback(self, self.ema1)
        self.add_callback(self.samples)
        self.register_state("image_evaluation", self.samples)
        if args.save_best_loss:
            best = BestLossCallback(self)
            self.add_callback(best)
            self.register_state("best_loss", best)
        self._steps_per_epoch: int | None = None
        self.step_rng = StepRNG(args.seed, args.process_index)

    # ----- schedule ---------------------------------------------------------------------------------------------
    def on_training_values(self, values: TrainingValues, sized: bool) -> None:
        self._steps_per_epoch = values.num_update_steps_per_epoch or None
        if self.args.save_every_epochs > 0:
            if self._steps_per_epoch is None:
                raise ValueError("save_every_epochs needs a dataset with a length (not streaming): use save_steps.")
            self.args.save_strategy = "steps"
            self.args.save_steps = max(1, round(self.args.save_every_epochs * self._steps_per_epoch))

    def warmup_steps(self, num_training_steps: int) -> float:
        """`warmup_epochs` x optimizer steps per epoch (fractional, like the official per-iteration rule), else
        transformers' `warmup_steps`."""
        if self.args.warmup_epochs > 0:
            if self._steps_per_epoch is None:
                raise ValueError("warmup_epochs needs a dataset with a length (not streaming): use warmup_steps.")
            return self.args.warmup_epochs * self._steps_per_epoch
        return self.args.get_warmup_steps(num_training_steps)

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        """`constant_with_warmup` (paper): lr = base x min(1, step / warmup); other types: transformers' schedules
        with the warm-up converted from epochs."""
        if self.lr_scheduler is None:
            optimizer = optimizer or self.optimizer
            warmup = self.warmup_steps(num_training_steps)
            if self.args.lr_scheduler_type == "constant_with_warmup" and warmup > 0:
                self.lr_scheduler = LambdaLR(optimizer, _WarmupThenConstant(warmup))
                self._created_lr_scheduler = True
            else:
                self.args.warmup_steps = round(warmup)
                super().create_scheduler(num_training_steps, optimizer)
        return self.lr_scheduler

    # ----- one step ---------------------------------------------------------------------------------------------
    def diffusion_loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Per-example loss `[B]` of a batch of [0, 1] images (mapped to [-1, 1])."""
        x = images.float() * 2 - 1
        batch = x.shape[0]
        if labels is None or not self.conditional:
            labels = torch.full((batch,), self.null_class, dtype=torch.long, device=x.device)
        generator = self.step_rng(self.state.global_step, x.device)
        if model.training:
            labels = drop_labels(labels, self.null_class, self.args.label_drop_prob, generator)
        t = self.flow.sample_time(batch, x.device, generator)
        noise = self.flow.sample_noise(x, generator)
        z = self.flow.add_noise(x, noise, t)
        output = model(z, t, labels).prediction
        return self.flow.loss(output, x, noise, z, t)

    def compute_loss(self, model: nn.Module, inputs: dict, return_outputs: bool = False, num_items_in_batch=None):
        images = inputs["pixel_values"]
        if model.training:
            self.record_images(images.shape[0], skipped=inputs.get("num_skipped"))
        loss = self.diffusion_loss(model, images, inputs.get("labels")).mean()
        return (loss, None) if return_outputs else loss

    # ----- publishing -------------------------------------------------------------------------------------------
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """As `Trainer.save_model`; under FSDP a final save (not a checkpoint, which stays sharded for resume)
        gathers the full weights so `output_dir` loads with `from_pretrained` (call it on every process)."""
        if _internal_call or not self.is_fsdp_enabled:
            return super().save_model(output_dir, _internal_call)
        self.check_finite()
        state_dict = self.accelerator.get_state_dict(self.model)  # collective
        if self.args.should_save:
            with _own_class(self.model):
                self._save(output_dir or self.args.output_dir, state_dict=state_dict)

    def model_card_text(self, dataset: str, metrics: dict, folder: str | None = None) -> str:
        """The JiT card (`folder`: the published folder when it is not `output_dir`, e.g. `best/`)."""
        model = self.accelerator.unwrap_model(self.model)
        config, args = model.config, self.args
        params = sum(p.numel() for p in model.parameters()) / 1e6
        labels = f"[i % {config.num_classes} for i in range(4)]" if self.conditional else "None"
        usage = [
            "from rae_hf import JiTModel, JiTPipeline",
            f"pipe = JiTPipeline(JiTModel.from_pretrained({card_model_id(args, folder)!r}).eval())",
            f"images = pipe({labels}, batch_size=4, num_inference_steps={args.sample_steps}, "
            f"guidance_scale={args.guidance_scale if self.conditional else 1.0}).images  # PIL images",
        ]
        parts = [
            ("parameters", f"{params:.1f}M"),
            ("objective", f"{self.flow.prediction_type}-prediction, {self.flow.loss_type}-loss, "
                          f"noise scale {self.flow.noise_scale}"),
            ("classes", config.num_classes if self.conditional else "unconditional"),
            ("weights", f"EMA {args.ema_decay}" if args.ema_decay > 0 else "trained weights"),
        ]  # fmt: skip
        keys = (*COMMON_TRAINING_KEYS, "ema_decay", "guidance_scale", "sample_steps", "sampler")
        return model_card(
            f"JiT {config.hidden_size}x{config.num_hidden_layers} /{config.patch_size} at {config.image_size}px",
            "A JiT (Li & He, arXiv 2511.13720) pixel-diffusion transformer trained with rae_hf.",
            usage,
            ["jit", "diffusion", "pixel-diffusion", "image-generation"],
            parts=parts,
            settings=recipe_rows(args, keys),
            metrics=metrics,
            dataset=dataset,
            pipeline_tag="unconditional-image-generation" if not self.conditional else None,
        )


__all__ = ["JiTTrainer"]
