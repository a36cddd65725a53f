"""Image evaluation during training as a TrainerCallback: any evaluate function (rFID/PSNR/SSIM of reconstructions,
FID/IS of generated samples, ...) on a step/epoch cadence, its best value kept across resume, and sample grids; the
reconstruction (`RFIDCallback`) and generation (`GenerationEvaluationCallback`) ones."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable

import torch
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.integrations import TensorBoardCallback, WandbCallback

from ..data.sharding import shard_loader
from ..evaluation.generation import SampleFn, evaluate_generation
from ..metrics.fid import check_fid_sample_count
from ..visualization import image_grid, labelled_grid, reconstruction_grid, save_png, to_uint8
from .ema import EMACallback

__all__ = ["GenerationEvaluationCallback", "ImageEvaluationCallback", "RFIDCallback", "report_image"]

EvaluateFn = Callable[[nn.Module], dict[str, float]]
GridFn = Callable[[nn.Module], torch.Tensor]


class ImageEvaluationCallback(TrainerCallback):
    """Runs `evaluate_fn(model)` every `eval_steps` optimizer steps and at each epoch end, with the EMA weights when
    an `EMACallback` is given (model in eval mode, no grad), and logs `<prefix><key>` for every returned value plus
    `<prefix><best_metric>_best` through `trainer.log` (so every reporter gets them).

    Every `sample_every` steps and at the last step (or at the end of a run stopped early), `grid_fn(model)` (a
    `[3, H, W]` image in [0, 1]: originals over reconstructions, or samples) is saved on the main process as
    `<output_dir>/samples/step_<N>.png` and sent to W&B / TensorBoard as `grid_name`, pixel for pixel the PNG.

    Checkpointed state (`state_dict` / `load_state_dict`; register it with `trainer.register_state(name, callback)`):
    the best value so far, so `..._best` continues across a resume. `evaluate_fn` runs on every process (metric syncs
    are collectives); each process should score its own unpadded share.
    """

    def __init__(
        self,
        trainer: Trainer,
        evaluate_fn: EvaluateFn,
        best_metric: str,
        greater_is_better: bool = False,
        eval_steps: int = 1000,
        at_epoch_end: bool = True,
        sample_every: int = 2500,
        grid_fn: GridFn | None = None,
        grid_name: str = "samples",
        ema: EMACallback | None = None,
        prefix: str = "eval_",
    ):
        if eval_steps < 0 or sample_every < 0:
            raise ValueError("eval_steps and sample_every must be >= 0 (0 disables).")
        self.trainer = trainer
        self.evaluate_fn = evaluate_fn
        self.best_metric = best_metric
        self.greater_is_better = greater_is_better
        self.eval_steps = eval_steps
        self.at_epoch_end = at_epoch_end
        self.sample_every = sample_every
        self.grid_fn = grid_fn
        self.grid_name = grid_name
        self.ema = ema
        self.prefix = prefix
        self.best = -math.inf if greater_is_better else math.inf
        self._last_evaluated_step = -1
        self._last_grid_step = -1

    # ----- checkpointed state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"best": torch.tensor(self.best, dtype=torch.float64)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.best = float(state["best"])

    # ----- triggers ---------------------------------------------------------------------------------------------
    def on_step_end(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        if self.eval_steps and step % self.eval_steps == 0:
            self.evaluate(model, step)
        if (self.sample_every and step % self.sample_every == 0) or step == state.max_steps:
            self.log_grid(model, step)  # the last step's grid here: reporters close before `on_train_end`

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if self.at_epoch_end:
            self.evaluate(model, state.global_step)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if state.global_step != self._last_grid_step:  # stopped early (a signal, a callback)
            self.log_grid(model, state.global_step)

    # ----- work -------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _evaluation_weights(self, model: nn.Module):
        """Eval mode, no grad, and the EMA weights swapped in when there are any."""
        was_training = model.training
        model.eval()
        swap = self.ema.swapped_in(model) if self.ema is not None and self.ema.shadow is not None else None
        try:
            with torch.no_grad(), swap if swap is not None else contextlib.nullcontext():
                yield
        finally:
            model.train(was_training)

    def _improved(self, value: float) -> bool:
        return value > self.best if self.greater_is_better else value < self.best

    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        """Run the evaluation now (once per step) and log it."""
        if step == self._last_evaluated_step:
            return {}
        self._last_evaluated_step = step
        with self._evaluation_weights(model):
            results = self.evaluate_fn(model)
        if self.best_metric not in results:
            raise KeyError(f"evaluate_fn returned {sorted(results)}, without the best_metric {self.best_metric!r}.")
        value = float(results[self.best_metric])
        if math.isfinite(value) and self._improved(value):
            self.best = value
        metrics = {f"{self.prefix}{key}": value for key, value in results.items()}
        metrics[f"{self.prefix}{self.best_metric}_best"] = self.best
        self._log(metrics)
        return metrics

    def _log(self, metrics: dict) -> None:
        """`trainer.log` from inside a step: keep Trainer's pending decision to log the training losses."""
        should_log = self.trainer.control.should_log
        self.trainer.log(metrics)
        self.trainer.control.should_log = should_log

    def log_grid(self, model: nn.Module, step: int) -> str | None:
        """Save (main process) and report `grid_fn(model)`; returns the PNG path."""
        self._last_grid_step = step
        if self.grid_fn is None or not self.trainer.is_world_process_zero():
            return None
        with self._evaluation_weights(model):
            grid = self.grid_fn(model)
        if grid is None:
            return None
        return self.save_grid(grid, step)

    def save_grid(self, grid: torch.Tensor, step: int) -> str:
        """Write `grid` to `<output_dir>/samples/step_<N>.png` and send it to W&B / TensorBoard (main process)."""
        folder = os.path.join(self.trainer.args.output_dir, "samples")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"step_{step:07d}.png")
        save_png(grid, path)
        report_image(self.trainer, self.grid_name, grid, step)
        return path


class RFIDCallback(ImageEvaluationCallback):
    """rFID, PSNR and SSIM of `model(images).reconstruction` on held-out images (an `RFIDEvaluator` over the first
    `num_samples` images, each process scoring its unpadded share), logged as `eval_rfid`, `eval_psnr`, `eval_ssim`,
    `eval_num_samples` and `eval_rfid_best`; grids of the first `num_grid_images` originals over their
    reconstructions (`reconstructions`)."""

    def __init__(
        self,
        trainer: Trainer,
        evaluator,
        eval_dataset,
        collate_fn,
        batch_size: int,
        eval_steps: int = 1000,
        at_epoch_end: bool = True,
        num_samples: int | None = 5000,
        sample_every: int = 2500,
        num_grid_images: int = 8,
        ema: EMACallback | None = None,
        reference=None,
    ):
        if hasattr(eval_dataset, "__len__"):  # a streamed split is counted at the first evaluation
            count = len(eval_dataset) if num_samples is None else min(num_samples, len(eval_dataset))
            check_fid_sample_count(
                count,
                "the validation split",
                "add validation images (--validation_dir, --validation_split_name, --fid_num_samples) or turn the "
                "evaluation off (--fid_steps 0 --fid_at_epoch_end false)",
            )
        self.evaluator = evaluator
        self.eval_dataset = eval_dataset
        self.collate_fn = collate_fn
        self.batch_size = batch_size
        self.num_samples = num_samples
        self.num_grid_images = num_grid_images
        self.reference = reference
        super().__init__(
            trainer,
            self._evaluate_reconstructions,
            best_metric="rfid",
            eval_steps=eval_steps,
            at_epoch_end=at_epoch_end,
            sample_every=sample_every,
            grid_fn=self._reconstruction_grid if num_grid_images > 0 else None,
            grid_name="reconstructions",
            ema=ema,
        )

    def _evaluate_reconstructions(self, model: nn.Module) -> dict[str, float]:
        accelerator = self.trainer.accelerator
        loader = shard_loader(
            self.eval_dataset,
            accelerator,
            self.collate_fn,
            self.batch_size,
            self.trainer.args.dataloader_num_workers,
            self.num_samples,
        )
        return self.evaluator.evaluate(
            lambda images: model(images).reconstruction, loader, accelerator=accelerator, reference=self.reference
        )

    def _reconstruction_grid(self, model: nn.Module) -> torch.Tensor | None:
        examples = []
        for example in self.eval_dataset:
            if example["pixel_values"] is not None:
                examples.append(example["pixel_values"])
            if len(examples) == self.num_grid_images:
                break
        if not examples:
            return None
        images = torch.stack(examples).to(next(model.parameters()).device)
        return reconstruction_grid(images, model(images).reconstruction)


class GenerationEvaluationCallback(ImageEvaluationCallback):
    """Generation FID/IS every `fid_steps` (and at epoch ends with `fid_at_epoch_end`), class-balanced over all
    processes, logged as `eval_fid`, `eval_inception_score`, ...; and every `sample_every` steps and at the end a
    fixed-seed grid of `num_grid_samples` samples (`samples/step_N.png`, W&B/TensorBoard). EMA weights when given.

    The trainer's arguments give the cadence, counts and seed; a subclass gives `sample_fn(model, seed)` (a
    `SampleFn`), `eval_num_classes(model)` (None: unconditional) and `grid_layout(model, count)` (labels or None,
    columns). The grid is sampled on every process (an FSDP forward is collective) and saved by the main one.
    """

    def __init__(self, trainer: Trainer, ema: EMACallback | None = None, class_names: list[str] | None = None):
        args = trainer.args
        self.reference = args.fid_reference_stats
        self.class_names = class_names
        super().__init__(
            trainer,
            self._evaluate_generation,
            best_metric="fid" if self.reference else "inception_score",
            greater_is_better=not self.reference,
            eval_steps=args.fid_steps,
            at_epoch_end=args.fid_at_epoch_end,
            sample_every=args.sample_every,
            grid_fn=self._sample_grid if args.num_grid_samples > 0 else None,
            grid_name="samples",
            ema=ema,
        )

    def sample_fn(self, model: nn.Module, seed: int) -> SampleFn:
        raise NotImplementedError

    def eval_num_classes(self, model: nn.Module) -> int | None:
        raise NotImplementedError

    def grid_layout(self, model: nn.Module, count: int) -> tuple[torch.Tensor | None, int]:
        raise NotImplementedError

    def _evaluate_generation(self, model: nn.Module) -> dict[str, float]:
        args, accelerator = self.trainer.args, self.trainer.accelerator
        return evaluate_generation(
            self.sample_fn(model, args.seed + 1 + accelerator.process_index),
            args.fid_num_samples,
            args.per_device_eval_batch_size,
            accelerator=accelerator,
            reference=self.reference,
            num_classes=self.eval_num_classes(model),
            inception_weights=args.inception_weights,
            inception_score_splits=min(10, args.fid_num_samples),
        )

    def log_grid(self, model: nn.Module, step: int) -> str | None:
        self._last_grid_step = step
        if self.grid_fn is None:
            return None
        with self._evaluation_weights(model):
            grid = self.grid_fn(model)
        if not self.trainer.is_world_process_zero():
            return None
        return self.save_grid(grid, step)

    def _sample_grid(self, model: nn.Module) -> torch.Tensor:
        count = self.trainer.args.num_grid_samples
        labels, columns = self.grid_layout(model, count)
        labels = None if labels is None else labels.to(next(model.parameters()).device)
        images = self.sample_fn(model, self.trainer.args.seed)(count, labels)
        if labels is None:
            return image_grid(images, columns)
        return labelled_grid(images, labels.tolist(), self.class_names, columns)


def report_image(trainer: Trainer, name: str, image: torch.Tensor, step: int) -> None:
    """Send a `[3, H, W]` image in [0, 1] to the W&B and TensorBoard reporters the trainer has, if any, as the uint8
    pixels `to_uint8(image)` that `save_png` writes (a float array would be cast to 0/1 by wandb: a black image)."""
    pixels = None
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, WandbCallback) and getattr(callback, "_initialized", False):
            pixels = to_uint8(image) if pixels is None else pixels
            callback._wandb.log({name: callback._wandb.Image(pixels), "train/global_step": step})
        elif isinstance(callback, TensorBoardCallback) and getattr(callback, "tb_writer", None) is not None:
            pixels = to_uint8(image) if pixels is None else pixels
            callback.tb_writer.add_image(name, pixels, global_step=step, dataformats="HWC")
