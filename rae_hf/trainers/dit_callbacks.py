"""RAE stage 2 during training: a fixed-seed, class-labelled grid of decoded samples and generation FID/IS, both
with the EMA weights, through the shared `GenerationEvaluationCallback`."""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import Trainer

from ..callbacks.ema import EMACallback
from ..callbacks.image_evaluation import GenerationEvaluationCallback
from ..evaluation import SampleFn, balanced_labels

__all__ = ["DiTSamplesCallback", "grid_labels"]


def grid_labels(count: int, num_classes: int) -> torch.Tensor:
    """Labels of a `count`-image grid: class-major and balanced when every class fits (one row per class), else
    `count` classes spread over the label range."""
    if num_classes <= count:
        return balanced_labels(count, num_classes)
    return torch.arange(count, dtype=torch.long) * num_classes // count


class DiTSamplesCallback(GenerationEvaluationCallback):
    """Generation FID/IS and a fixed-seed, class-major grid of decoded samples with their class names
    (`GenerationEvaluationCallback`). Sampling follows the trainer's arguments (Euler 49 steps, guidance, and the
    training time shift); EMA weights when given."""

    def __init__(
        self,
        trainer: Trainer,
        rae: nn.Module,
        ema: EMACallback | None = None,
        guidance_model: nn.Module | None = None,
        class_names: list[str] | None = None,
    ):
        self.rae = rae
        self.guidance_model = guidance_model
        super().__init__(trainer, ema, class_names)

    def sample_fn(self, model: nn.Module, seed: int) -> SampleFn:
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

    def eval_num_classes(self, model: nn.Module) -> int | None:
        return model.config.num_classes or None

    def grid_layout(self, model: nn.Module, count: int) -> tuple[torch.Tensor | None, int]:
        num_classes = model.config.num_classes
        if not num_classes:
            return None, max(1, math.isqrt(count))
        columns = math.ceil(count / num_classes) if num_classes <= count else max(1, math.isqrt(count))
        return grid_labels(count, num_classes), columns
