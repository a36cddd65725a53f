"""RAE stage 2 during training: a fixed-seed, class-labelled grid of decoded samples and generation FID/IS, both
with the EMA weights, through the shared `ImageEvaluationCallback`."""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import Trainer

from ..callbacks.ema import EMACallback
from ..callbacks.image_evaluation import ImageEvaluationCallback
from ..evaluation import balanced_labels, evaluate_generation
from ..visualization import image_grid, labelled_grid

__all__ = ["DiTSamplesCallback", "grid_labels"]


def grid_labels(count: int, num_classes: int) -> torch.Tensor:
    """Labels of a `count`-image grid: class-major and balanced when every class fits (one row per class), else
    `count` classes spread over the label range."""
    if num_classes <= count:
        return balanced_labels(count, num_classes)
    return torch.arange(count, dtype=torch.long) * num_classes // count


class DiTSamplesCallback(ImageEvaluationCallback):
    """Generation FID/IS every `fid_steps` (and at epoch ends with `fid_at_epoch_end`), class-balanced over all
    processes (`eval_fid`, `eval_inception_score`, ...), and every `sample_every` steps and at the end a fixed-seed
    grid of `num_grid_samples` decoded samples with their class names (`samples/step_N.png`, W&B/TensorBoard).
    Sampling follows the trainer's arguments (Euler 49 steps, guidance); EMA weights when given."""

    def __init__(
        self,
        trainer: Trainer,
        rae: nn.Module,
        ema: EMACallback | None = None,
        guidance_model: nn.Module | None = None,
        class_names: list[str] | None = None,
    ):
        args = trainer.args
        self.rae = rae
        self.guidance_model = guidance_model
        self.class_names = class_names
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

    def _sample_fn(self, model: nn.Module, seed: int):
        from ..pipelines.pipeline_rae_dit import RAEDiTPipeline, make_sample_fn  # diffusers: imported when sampling

        args = self.trainer.args
        pipe = RAEDiTPipeline(transformer=model, vae=self.rae)
        return make_sample_fn(
            pipe,
            num_inference_steps=args.sample_steps,
            sampler=args.sampler,
            guidance=None if args.guidance == "none" else args.guidance,
            guidance_scale=1.0 if args.guidance == "none" else args.guidance_scale,
            guidance_interval=tuple(args.guidance_interval),
            guidance_model=self.guidance_model,
            seed=seed,
            autocast_dtype=torch.bfloat16 if args.bf16 else None,
        )

    def _evaluate(self, model: nn.Module) -> dict[str, float]:
        args, accelerator = self.trainer.args, self.trainer.accelerator
        num_classes = model.config.num_classes or None
        return evaluate_generation(
            self._sample_fn(model, args.seed + 1 + accelerator.process_index),
            args.fid_num_samples,
            args.per_device_eval_batch_size,
            accelerator=accelerator,
            reference=self.reference,
            num_classes=num_classes,
            inception_weights=args.inception_weights,
            inception_score_splits=min(10, args.fid_num_samples),
        )

    def _grid(self, model: nn.Module) -> torch.Tensor:
        count = self.trainer.args.num_grid_samples
        num_classes = model.config.num_classes
        device = next(model.parameters()).device
        labels = grid_labels(count, num_classes) if num_classes else None
        images = self._sample_fn(model, self.trainer.args.seed)(count, None if labels is None else labels.to(device))
        if labels is None:
            return image_grid(images, max(1, math.isqrt(count)))
        columns = math.ceil(count / num_classes) if num_classes <= count else max(1, math.isqrt(count))
        return labelled_grid(images, labels.tolist(), self.class_names, columns)
