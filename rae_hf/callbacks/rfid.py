"""rFID, PSNR and SSIM of a reconstruction model during training, plus reconstruction grids, as a TrainerCallback."""

from __future__ import annotations

import contextlib
import math
import os

import numpy as np
import torch
from torchvision.utils import save_image
from transformers import Trainer, TrainerCallback
from transformers.integrations import TensorBoardCallback, WandbCallback

from ..evaluation import shard_loader
from ..metrics import RFIDEvaluator
from ..visualization import reconstruction_grid
from .ema import EMACallback


class RFIDCallback(TrainerCallback):
    """Evaluates `model(images).reconstruction` on held-out images every `eval_steps` optimizer steps and at each
    epoch end (seed defaults: 1000 and on), with the EMA weights when an `EMACallback` is given.

    Logged through `trainer.log` (so every reporter gets them): `eval_rfid`, `eval_psnr`, `eval_ssim`,
    `eval_rfid_best`, `eval_num_samples`. Every `sample_every` steps (and at the end of training) a grid of
    originals over reconstructions is written to `<output_dir>/samples/step_<N>.png` and sent to W&B / TensorBoard.

    Every process must run it (the metric sync is a collective): each evaluates its own unpadded shard, so each image
    counts once; `num_samples` is the total over processes.
    """

    def __init__(
        self,
        trainer: Trainer,
        evaluator: RFIDEvaluator,
        eval_dataset,
        collate_fn,
        batch_size: int,
        eval_steps: int = 1000,
        at_epoch_end: bool = True,
        num_samples: int | None = 5000,
        sample_every: int = 2500,
        num_grid_images: int = 8,
        ema: EMACallback | None = None,
        reference: tuple[np.ndarray, np.ndarray] | None = None,
    ):
        if eval_steps < 0 or sample_every < 0:
            raise ValueError("eval_steps and sample_every must be >= 0 (0 disables).")
        self.trainer = trainer
        self.evaluator = evaluator
        self.eval_dataset = eval_dataset
        self.collate_fn = collate_fn
        self.batch_size = batch_size
        self.eval_steps = eval_steps
        self.at_epoch_end = at_epoch_end
        self.num_samples = num_samples
        self.sample_every = sample_every
        self.num_grid_images = num_grid_images
        self.ema = ema
        self.reference = reference
        self.best_rfid = math.inf
        self._last_evaluated_step = -1

    # ----- triggers ---------------------------------------------------------------------------------------------
    def on_step_end(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        if self.eval_steps and step % self.eval_steps == 0:
            self.evaluate(model, step)
        if self.sample_every and step % self.sample_every == 0:
            self.log_samples(model, step)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if self.at_epoch_end:
            self.evaluate(model, state.global_step)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.log_samples(model, state.global_step)

    # ----- work -------------------------------------------------------------------------------------------------
    def _weights(self, model):
        if self.ema is not None and self.ema.shadow is not None:
            return self.ema.swapped_in(model)
        return contextlib.nullcontext()

    def evaluate(self, model, step: int) -> dict[str, float]:
        """Run the evaluation now (once per step) and log it."""
        if step == self._last_evaluated_step:
            return {}
        self._last_evaluated_step = step
        accelerator = self.trainer.accelerator
        loader = shard_loader(
            self.eval_dataset,
            accelerator,
            self.collate_fn,
            self.batch_size,
            self.trainer.args.dataloader_num_workers,
            self.num_samples,
        )
        was_training = model.training
        model.eval()
        with self._weights(model):
            results = self.evaluator.evaluate(
                lambda images: model(images).reconstruction,
                loader,
                accelerator=accelerator,
                reference=self.reference,
            )
        model.train(was_training)
        self.best_rfid = min(self.best_rfid, results["rfid"])
        metrics = {f"eval_{k}": v for k, v in results.items()}
        metrics["eval_rfid_best"] = self.best_rfid
        self._log(metrics)
        return metrics

    def _log(self, metrics: dict) -> None:
        """`trainer.log` from inside a step: keep Trainer's pending decision to log the training losses."""
        should_log = self.trainer.control.should_log
        self.trainer.log(metrics)
        self.trainer.control.should_log = should_log

    @torch.no_grad()
    def log_samples(self, model, step: int) -> str | None:
        """Save (main process) and report a grid of the first validation images over their reconstructions."""
        if not self.trainer.is_world_process_zero() or self.num_grid_images == 0:
            return None
        examples = []
        for example in self.eval_dataset:
            if example["pixel_values"] is not None:
                examples.append(example["pixel_values"])
            if len(examples) == self.num_grid_images:
                break
        device = next(model.parameters()).device
        images = torch.stack(examples).to(device)
        was_training = model.training
        model.eval()
        with self._weights(model):
            reconstructions = model(images).reconstruction
        model.train(was_training)
        grid = reconstruction_grid(images, reconstructions)
        folder = os.path.join(self.trainer.args.output_dir, "samples")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"step_{step:07d}.png")
        save_image(grid, path)
        report_image(self.trainer, "reconstructions", grid, step)
        return path


def report_image(trainer: Trainer, name: str, image: torch.Tensor, step: int) -> None:
    """Send a `[3, H, W]` image in [0, 1] to the W&B and TensorBoard reporters the trainer has, if any."""
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, WandbCallback) and getattr(callback, "_initialized", False):
            image_array = image.permute(1, 2, 0).cpu().numpy()
            callback._wandb.log({name: callback._wandb.Image(image_array), "train/global_step": step})
        elif isinstance(callback, TensorBoardCallback) and getattr(callback, "tb_writer", None) is not None:
            callback.tb_writer.add_image(name, image, global_step=step)
