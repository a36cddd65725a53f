"""JiT's training callbacks: a fixed-seed sample grid and generation FID/IS (EMA weights), the best-by-loss model,
and, for text-as-pixels runs, token and text (exact-sequence) recovery accuracy on train and held-out texts, from
one-step x-prediction at fixed noise levels and from the full sampler, plus a few sampled texts."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Sequence

import torch
from torch import nn
from transformers import Trainer, TrainerCallback

from ..callbacks.ema import EMACallback
from ..callbacks.image_evaluation import GenerationEvaluationCallback
from ..diffusion import FlowMatching, sample_ode
from ..evaluation import SampleFn
from ..evaluation.generation import pipeline_sample_fn
from ..hub import write_model_card
from ..text_pixels import TextPixelCodec, sequence_accuracy, token_accuracy

__all__ = ["BestLossCallback", "JiTSamplesCallback", "TextRecoveryCallback", "jit_sample_fn", "text_recovery_metrics"]

logger = logging.getLogger(__name__)


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
    return pipeline_sample_fn(
        pipe,
        seed,
        autocast_dtype,
        num_inference_steps=num_steps,
        sampler=sampler,
        guidance_scale=guidance_scale,
        guidance_interval=guidance_interval,
    )


class JiTSamplesCallback(GenerationEvaluationCallback):
    """Generation FID/IS and a fixed-seed grid (labels `i mod num_classes`) of JiT samples, with the trainer's
    sampler settings (`GenerationEvaluationCallback`)."""

    def sample_fn(self, model: nn.Module, seed: int) -> SampleFn:
        args = self.trainer.args
        autocast = torch.bfloat16 if args.bf16 else None
        interval = tuple(args.guidance_interval)
        return jit_sample_fn(model, args.sample_steps, args.sampler, args.guidance_scale, interval, seed, autocast)

    def eval_num_classes(self, model: nn.Module) -> int | None:
        conditional = model.config.num_classes > 0 and not self.trainer.args.unconditional
        return model.config.num_classes if conditional else None

    def grid_layout(self, model: nn.Module, count: int) -> tuple[torch.Tensor | None, int]:
        num_classes = self.eval_num_classes(model)
        labels = None if num_classes is None else torch.arange(count) % num_classes
        return labels, max(1, math.isqrt(count))


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
                card = self.trainer.model_card_text("", {"epoch_mean_loss": mean}, folder=path)
                write_model_card(path, card)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"best": torch.tensor(self.best, dtype=torch.float64)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.best = float(state["best"])


@torch.no_grad()
def text_recovery_metrics(
    model: nn.Module,
    flow: FlowMatching,
    codec: TextPixelCodec,
    texts: Sequence[str],
    noise_levels: Sequence[float] = (0.25, 0.5, 0.75),
    sampler_start: float | None = 0.5,
    sample_steps: int = 50,
    labels: torch.Tensor | None = None,
    seed: int = 0,
    batch_size: int = 64,
) -> dict[str, float]:
    """Token/text accuracy of recovering `texts` from `z_t = t x + (1 - t) e`:
    `token_acc_t{t}` / `text_acc_t{t}` for one x-prediction at each `t` of `noise_levels`, and `token_acc_sampler` /
    `text_acc_sampler` integrating the ODE from `sampler_start` to 1 (Heun, `sample_steps` steps over that range)."""
    device = next(model.parameters()).device
    null = model.config.null_class
    sums: dict[str, float] = {}
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        tokens = torch.tensor([codec.tokenize(text) for text in chunk], device=device)
        x = codec.tokens_to_images(tokens) * 2 - 1
        y = labels[start : start + len(chunk)].to(device) if labels is not None else None
        y = torch.full((len(chunk),), null, device=device, dtype=torch.long) if y is None else y
        generator = torch.Generator(device).manual_seed(seed + start)
        noise = flow.sample_noise(x, generator)

        def score(name: str, clean: torch.Tensor, tokens=tokens, chunk=chunk) -> None:
            predicted = codec.images_to_tokens((clean.clamp(-1, 1) + 1) / 2)
            for key, fn in (("token_acc", token_accuracy), ("text_acc", sequence_accuracy)):
                value = fn(predicted, tokens, codec.pad_id).item() * len(chunk)
                sums[f"{key}_{name}"] = sums.get(f"{key}_{name}", 0.0) + value

        for t in noise_levels:
            z = flow.add_noise(x, noise, torch.full((len(chunk),), t, device=device))
            score(f"t{t:g}", flow.to_clean(model(z, t, y).prediction.float(), z, t))
        if sampler_start is not None:
            z = flow.add_noise(x, noise, torch.full((len(chunk),), sampler_start, device=device))

            def velocity(z_t, t, y=y):
                return flow.to_velocity(model(z_t, t, y).prediction.float(), z_t, t)

            steps = max(1, round(sample_steps * (1 - sampler_start)))
            score("sampler", sample_ode(velocity, z, steps, "heun", t_start=sampler_start))
    return {key: value / max(1, len(texts)) for key, value in sums.items()}


class TextRecoveryCallback(TrainerCallback):
    """Every `every` steps (and at the end), logs `text_{train,eval}_{token,text}_acc_{t0.25,...,sampler}` (EMA
    weights when given) and writes a few texts sampled from noise to `output_dir/text_samples.jsonl`."""

    def __init__(
        self,
        trainer: Trainer,
        codec: TextPixelCodec,
        train_texts: Sequence[str],
        eval_texts: Sequence[str],
        every: int = 0,
        ema: EMACallback | None = None,
        num_sampled_texts: int = 4,
    ):
        self.trainer, self.codec, self.every, self.ema = trainer, codec, every, ema
        self.texts = {"train": list(train_texts), "eval": list(eval_texts)}
        self.num_sampled_texts = num_sampled_texts
        self.last_metrics: dict[str, float] = {}
        self._last_step = -1

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.every and state.global_step % self.every == 0:
            self.evaluate(model, state.global_step)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.evaluate(model, state.global_step)

    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        if step == self._last_step:
            return self.last_metrics
        self._last_step = step
        args, flow = self.trainer.args, self.trainer.flow
        was_training = model.training
        model.eval()
        swap = self.ema.swapped_in(model) if self.ema is not None and self.ema.shadow is not None else None
        metrics: dict[str, float] = {}
        try:
            with swap if swap is not None else contextlib.nullcontext():
                for split, texts in self.texts.items():
                    if texts:
                        values = text_recovery_metrics(
                            model, flow, self.codec, texts, sample_steps=args.sample_steps, seed=args.seed
                        )
                        metrics.update({f"text_{split}_{k}": v for k, v in values.items()})
                sampled = self._sample_texts(model)  # on every process: FSDP forwards are collective
        finally:
            model.train(was_training)
        should_log = self.trainer.control.should_log
        self.trainer.log(metrics)
        self.trainer.control.should_log = should_log
        if sampled and self.trainer.is_world_process_zero():
            logger.info("Texts sampled at step %d: %s", step, sampled)
            with open(os.path.join(args.output_dir, "text_samples.jsonl"), "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": step, "texts": sampled}, ensure_ascii=False) + "\n")
        self.last_metrics = metrics
        return metrics

    @torch.no_grad()
    def _sample_texts(self, model: nn.Module) -> list[str]:
        if self.num_sampled_texts <= 0:
            return []
        args = self.trainer.args
        sample = jit_sample_fn(model, args.sample_steps, args.sampler, seed=args.seed)
        return self.codec.decode(sample(self.num_sampled_texts, None))
