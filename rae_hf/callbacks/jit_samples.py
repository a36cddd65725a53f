"""JiT during training: a fixed-seed sample grid and generation FID/IS (EMA weights), and the best-by-loss model."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable

import torch
from torch import nn
from torchvision.utils import make_grid
from transformers import Trainer, TrainerCallback

from ..evaluation import SampleFn, evaluate_generation
from .ema import EMACallback
from .image_evaluation import ImageEvaluationCallback

__all__ = ["BestLossCallback", "JiTSamplesCallback", "jit_sample_fn"]


def jit_sample_fn(
    model: nn.Module,
    num_steps: int = 50,
    sampler: str = "heun",
    guidance_scale: float = 1.0,
    guidance_interval: tuple[float, float] = (0.1, 1.0),
    seed: int = 0,
    autocast_dtype: torch.dtype | None = None,
) -> SampleFn:
    """`sample_fn(n, labels)` -> `[n, 3, H, W]` images in [0, 1] from `JiTPipeline` (labels None: unconditional),
    drawing the initial noise from one generator seeded with `seed` (give each process its own seed)."""
    from ..pipelines import JiTPipeline  # diffusers is heavy: imported when sampling is asked for

    pipe = JiTPipeline(model)
    pipe.set_progress_bar_config(disable=True)
    device = next(model.parameters()).device
    generator = torch.Generator(device).manual_seed(seed)

    def sample(count: int, labels: torch.Tensor | None) -> torch.Tensor:
        autocast = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
        with autocast:
            return pipe(
                labels,
                batch_size=count,
                num_inference_steps=num_steps,
                sampler=sampler,
                guidance_scale=guidance_scale,
                guidance_interval=guidance_interval,
                generator=generator,
                output_type="pt",
            ).images

    return sample


class JiTSamplesCallback(ImageEvaluationCallback):
    """Generation FID/IS every `fid_steps` (and at epoch ends with `fid_at_epoch_end`), class-balanced over all
    processes, logged as `eval_fid`, `eval_inception_score`, ...; and a fixed-seed grid of `num_grid_samples` images
    (labels `i mod num_classes`) saved as `samples/step_N.png` and sent to W&B/TensorBoard. EMA weights when given."""

    def __init__(self, trainer: Trainer, ema: EMACallback | None = None):
        args = trainer.args
        self.reference = args.fid_reference_stats
        super().__init__(
            trainer,
            self._evaluate,
            best_metric="fid" if self.reference else "inception_score",
            greater_is_better=not self.reference,
            eval_steps=args.fid_steps,
            at_epoch_end=args.fid_at_epoch_end,
            sample_every=args.sample_every,
            grid_fn=self._grid if args.num_grid_samples > 0 else None,
            grid_name="samples",
            ema=ema,
        )

    def _sample_fn(self, model: nn.Module, seed: int) -> Callable:
        args = self.trainer.args
        return jit_sample_fn(
            model,
            args.sample_steps,
            args.sampler,
            args.guidance_scale,
            tuple(args.guidance_interval),
            seed,
            torch.bfloat16 if args.bf16 else None,
        )

    def _conditional(self, model: nn.Module) -> bool:
        return model.config.num_classes > 0 and not self.trainer.args.unconditional

    def _evaluate(self, model: nn.Module) -> dict[str, float]:
        args, accelerator = self.trainer.args, self.trainer.accelerator
        sample_fn = self._sample_fn(model, args.seed + 1 + accelerator.process_index)
        num_classes = model.config.num_classes if self._conditional(model) else None
        return evaluate_generation(
            sample_fn,
            args.fid_num_samples,
            args.per_device_eval_batch_size,
            accelerator=accelerator,
            reference=self.reference,
            num_classes=num_classes,
            inception_weights=args.inception_weights,
            inception_score_splits=min(10, args.fid_num_samples),
        )

    def log_grid(self, model: nn.Module, step: int) -> str | None:
        """Every process samples (an FSDP forward is collective); the main process saves and reports."""
        if self.grid_fn is None:
            return None
        with self._evaluation_weights(model):
            grid = self.grid_fn(model)
        if not self.trainer.is_world_process_zero():
            return None
        return self.save_grid(grid, step)

    def _grid(self, model: nn.Module) -> torch.Tensor:
        count = self.trainer.args.num_grid_samples
        device = next(model.parameters()).device
        labels = None
        if self._conditional(model):
            labels = torch.arange(count, device=device) % model.config.num_classes
        images = self._sample_fn(model, self.trainer.args.seed)(count, labels)
        return make_grid(images.float().cpu(), nrow=max(1, math.isqrt(count)), padding=1)


class BestLossCallback(TrainerCallback):
    """At each epoch end, saves the model to `output_dir/best` when the epoch's mean logged loss is the lowest so far
    (the seed recipe's "best checkpoint"). Its best value is checkpointed (`register_state`) so it survives resume."""

    def __init__(self, trainer: Trainer, folder: str = "best"):
        self.trainer = trainer
        self.folder = folder
        self.best = math.inf
        self._sum, self._count = 0.0, 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs and math.isfinite(logs["loss"]):
            self._sum, self._count = self._sum + logs["loss"], self._count + 1

    def on_epoch_end(self, args, state, control, **kwargs):
        if self._count == 0:
            return
        mean, self._sum, self._count = self._sum / self._count, 0.0, 0
        if mean < self.best:
            self.best = mean
            path = os.path.join(args.output_dir, self.folder)
            self.trainer.save_model(path)
            if self.trainer.is_world_process_zero():
                with open(os.path.join(path, "best_loss.txt"), "w") as f:
                    f.write(f"epoch {state.epoch:.2f} step {state.global_step} mean loss {mean:.6g}\n")

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"best": torch.tensor(self.best, dtype=torch.float64)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.best = float(state["best"])
