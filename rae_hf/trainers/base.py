"""What every rae_hf trainer adds to `transformers.Trainer`: loss-term logging without per-step host syncs,
non-finite loss detection, images/s, and checkpointing of stateful callbacks (EMA) and extra training state."""

from __future__ import annotations

import math
import os
import time

import safetensors.torch
import torch
from transformers import Trainer

from ..callbacks import CSVLoggerCallback


class NonFiniteLossError(FloatingPointError):
    """Raised when a logged loss term is NaN or infinite."""


class RaeHfTrainer(Trainer):
    """Base `Trainer` of the library.

    - `record_metrics(...)` accumulates detached tensors on the device; they are averaged over steps and processes
      only when Trainer logs (one sync per `logging_steps`, none per step).
    - A NaN/inf in any logged loss raises `NonFiniteLossError` naming the step and the terms.
    - Callbacks with `checkpoint_name`, `state_dict()` and `load_state_dict()` (e.g. `EMACallback`) are saved into
      every checkpoint as `<checkpoint_name>.safetensors` and restored on resume.
    - Subclasses save/restore more state by overriding `save_extra_state(dir)` / `load_extra_state(dir)`.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if getattr(self.args, "log_csv", False):
            self.add_callback(CSVLoggerCallback(self.args.output_dir))
        self._metric_sums: dict[str, torch.Tensor] = {}
        self._metric_counts: dict[str, int] = {}
        self._images_since_log = 0
        self._last_log_time: float | None = None
        self._skipped_images: torch.Tensor | None = None

    # ----- metrics --------------------------------------------------------------------------------------------
    def record_metrics(self, **values: torch.Tensor | float) -> None:
        """Add one observation per metric (tensors stay on the device until the next log)."""
        for name, value in values.items():
            value = value.detach().float() if isinstance(value, torch.Tensor) else torch.tensor(float(value))
            if name in self._metric_sums:
                self._metric_sums[name] += value.to(self._metric_sums[name].device)
            else:
                self._metric_sums[name] = value.clone()
            self._metric_counts[name] = self._metric_counts.get(name, 0) + 1

    def record_images(self, count: int, skipped: torch.Tensor | None = None) -> None:
        """Count images processed on this process (for images/s) and undecodable ones the collator dropped."""
        self._images_since_log += count
        if skipped is not None:
            skipped = skipped.detach().sum()
            self._skipped_images = skipped if self._skipped_images is None else self._skipped_images + skipped

    def _drain_metrics(self) -> dict[str, float]:
        if not self._metric_sums:
            return {}
        names = sorted(self._metric_sums)
        device = self.args.device
        means = torch.stack([self._metric_sums[n].to(device) / self._metric_counts[n] for n in names])
        means = self.accelerator.reduce(means, reduction="mean")
        self._metric_sums.clear()
        self._metric_counts.clear()
        metrics = dict(zip(names, means.tolist(), strict=True))
        if self._skipped_images is not None:  # running total over all processes since training started
            total = self.accelerator.reduce(self._skipped_images.to(device).float(), reduction="sum")
            metrics["skipped_images_total"] = int(total.item())
        return metrics

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log (not the final summary or an evaluation)
            logs.update(self._drain_metrics())
            now = time.perf_counter()
            if self._last_log_time is not None and now > self._last_log_time:
                images = self._images_since_log * self.accelerator.num_processes
                logs["images_per_second"] = images / (now - self._last_log_time)
            self._last_log_time, self._images_since_log = now, 0
            bad = {k: v for k, v in logs.items() if k.startswith("loss") and not math.isfinite(v)}
            if bad:
                super().log(logs, start_time)
                raise NonFiniteLossError(
                    f"Non-finite loss at step {self.state.global_step}: {bad}. Try a lower learning rate, bf16 "
                    "instead of fp16, or resume from the last checkpoint with `--resume_from_checkpoint last`."
                )
        super().log(logs, start_time)

    def floating_point_ops(self, inputs) -> int:
        """FLOP counting is off: Trainer's estimate is meant for text models and walks every parameter each step."""
        return 0

    # ----- checkpoints ----------------------------------------------------------------------------------------
    def _stateful_callbacks(self) -> list:
        return [cb for cb in self.callback_handler.callbacks if hasattr(cb, "checkpoint_name")]

    def save_extra_state(self, output_dir: str) -> None:
        """Save state beyond Trainer's own (called on the main process, inside each checkpoint folder)."""

    def load_extra_state(self, checkpoint_dir: str) -> None:
        """Restore what `save_extra_state` wrote (called on every process when resuming)."""

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        if self.args.should_save:
            for callback in self._stateful_callbacks():
                path = os.path.join(output_dir, f"{callback.checkpoint_name}.safetensors")
                safetensors.torch.save_file(callback.state_dict(), path)
            self.save_extra_state(output_dir)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        for callback in self._stateful_callbacks():
            path = os.path.join(checkpoint, f"{callback.checkpoint_name}.safetensors")
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path} is missing: the checkpoint cannot restore {type(callback).__name__}.")
            callback.load_state_dict(safetensors.torch.load_file(path))
        self.load_extra_state(checkpoint)


def load_torch_state(path: str) -> dict:
    """Load a state dict saved with `torch.save`, refusing anything but tensors and plain containers."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing from the checkpoint.")
    return torch.load(path, map_location="cpu", weights_only=True)
