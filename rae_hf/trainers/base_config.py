"""`BaseTrainingArguments`: what every rae_hf trainer shares on top of `transformers.TrainingArguments` — logging,
EMA, image evaluation (FID), sample grids, reliability switches — validated when the arguments are built.

CUDA defaults (CPU runs are unchanged): TF32 matmuls and convolutions on (`tf32`, on Ampere or newer), fused AdamW
(Trainer's `optim` default, `adamw_torch_fused`), pinned host memory with non-blocking copies of the batches, and
data workers kept alive across epochs when there are any (`dataloader_persistent_workers`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments
from transformers.utils import is_torch_tf32_available


@dataclass
class BaseTrainingArguments(TrainingArguments):
    """Shared arguments of every rae_hf trainer. Method arguments subclass this and validate their own fields in
    `__post_init__` after calling `super().__post_init__()`."""

    lr_scheduler_type: str = field(default="cosine_with_min_lr", metadata={"help": "Learning-rate schedule."})
    min_lr: float = field(default=0.0, metadata={"help": "Final lr of `cosine_with_min_lr` (<= learning_rate)."})
    logging_nan_inf_filter: bool = field(
        default=False, metadata={"help": "Keep False: a NaN/inf loss must stop the run, not be averaged away."}
    )
    remove_unused_columns: bool = field(default=False, metadata={"help": "Images arrive as `pixel_values`."})
    tf32: bool | None = field(
        default=None,
        metadata={"help": "TF32 matmuls/convolutions (Ampere or newer GPUs). Default: on when training on CUDA."},
    )
    dataloader_persistent_workers: bool | None = field(
        default=None,
        metadata={"help": "Keep data workers alive across epochs. Default: on when dataloader_num_workers > 0."},
    )
    log_csv: bool = field(default=True, metadata={"help": "Also write every logged value to output_dir/logs.csv."})
    profile_steps: int = field(
        default=0, metadata={"help": "Profile this many steps with torch.profiler (trace in output_dir/profile)."}
    )
    ema_decay: float = field(default=0.0, metadata={"help": "EMA decay per optimizer step; 0 disables the EMA."})
    ema_apply_at_end: bool = field(
        default=True, metadata={"help": "Copy the EMA weights into the model when training ends (what gets published)."}
    )
    fid_steps: int = field(default=0, metadata={"help": "Image evaluation (FID...) every N steps (0: never)."})
    fid_at_epoch_end: bool = field(default=False, metadata={"help": "Also run the image evaluation at epoch ends."})
    fid_num_samples: int | None = field(
        default=5000, metadata={"help": "Images per evaluation (all processes together); null: the whole split."}
    )
    sample_every: int = field(default=2500, metadata={"help": "Save/log a sample grid every N steps (0: at the end)."})
    inception_weights: str | None = field(
        default=None, metadata={"help": "Local FID Inception-v3 weights (pt_inception-2015-12-05-6726825d.pth)."}
    )
    fid_reference_stats: str | None = field(
        default=None, metadata={"help": "ADM/torch-fidelity .npz (mu, sigma): the real side of the FID."}
    )
    save_on_signal: bool = field(
        default=True, metadata={"help": "On SIGTERM/SIGINT save a checkpoint after the current step, then stop."}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace a run already in output_dir (its checkpoints and logs are removed)."}
    )
    allow_partial_resume: bool = field(
        default=False,
        metadata={"help": "Resume from a checkpoint lacking optimizer/scheduler/RNG files (with a warning)."},
    )
    allow_config_change: bool = field(
        default=False,
        metadata={"help": "Resume with a changed run configuration (new lr, schedule...; applied from that step)."},
    )

    def __post_init__(self):
        if self.lr_scheduler_type == "cosine_with_min_lr" and not self.lr_scheduler_kwargs:
            self.lr_scheduler_kwargs = {"min_lr": self.min_lr}
        cuda = not self.use_cpu and torch.cuda.is_available()
        if self.accelerator_config is None:
            # streamed data: every process reads its own batches (no concatenation); on CUDA, batches from pinned
            # memory are copied to the device without blocking the host
            self.accelerator_config = {"dispatch_batches": False, "non_blocking": cuda}
        if self.tf32 is None and cuda and is_torch_tf32_available():
            self.tf32 = True
        if self.dataloader_persistent_workers is None:
            self.dataloader_persistent_workers = self.dataloader_num_workers > 0
        self._validate_shared()
        super().__post_init__()
        if cuda and self.tf32:
            # transformers switched TF32 on through torch's per-backend API; torch 2.9-2.14 then raise when anything
            # (inductor's caches among them) reads the legacy setting. The legacy call leaves both readable.
            torch.set_float32_matmul_precision("high")

    def _validate_shared(self) -> None:
        """Reject values that would fail deep inside a run (or silently do the wrong thing), naming the argument."""
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(f"learning_rate={self.learning_rate} must be a positive number.")
        if self.min_lr < 0 or self.min_lr > self.learning_rate:
            raise ValueError(
                f"min_lr={self.min_lr} must be in [0, learning_rate={self.learning_rate}] (else the 'decay' rises)."
            )
        if self.max_steps is None or self.max_steps <= 0:
            if not self.num_train_epochs > 0:
                raise ValueError(
                    f"num_train_epochs={self.num_train_epochs} must be > 0 (or set max_steps): nothing would train."
                )
        for name in ("profile_steps", "fid_steps", "sample_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0 (0 disables).")
        if self.fid_num_samples is not None and self.fid_num_samples < 2:
            raise ValueError(f"fid_num_samples={self.fid_num_samples} must be >= 2 (FID needs a covariance).")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay={self.ema_decay} must be in [0, 1).")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1.")
