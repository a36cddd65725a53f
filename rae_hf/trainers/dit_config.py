"""`DiTTrainingArguments`: RAE stage 2 (DiT-DH on normalized RAE latents) on top of the shared base arguments.
Defaults are the official DiTDH-XL ImageNet-256 recipe (bytetriper/RAE, current configs)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..diffusion import SAMPLERS, FlowMatching
from .base_config import BaseTrainingArguments

GUIDANCE_KINDS = ("none", "cfg", "autoguidance")


@dataclass
class DiTTrainingArguments(BaseTrainingArguments):
    """Arguments of `DiTTrainer` (paper: AdamW (0.9, 0.95), wd 0, eps 1e-8, lr 2e-4 for 40 epochs then linear to 2e-5
    at epoch 800, grad clip 1.0, EMA 0.9995 every step, logit-normal(0, 1) t in [0, 0.999] shifted by
    sqrt(C*h*w / 4096), class dropout 0.1, fp32)."""

    learning_rate: float = field(default=2e-4, metadata={"help": "AdamW lr (paper: 2e-4 at global batch 1024)."})
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2 (paper: 0.95)."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (paper: 0)."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping (paper: 1.0)."})
    lr_scheduler_type: str = field(
        default="constant", metadata={"help": "Only with --published_lr_schedule false: a transformers schedule."}
    )
    published_lr_schedule: bool = field(
        default=True,
        metadata={
            "help": "The official schedule: linear warm-up from 0 over lr_warmup_epochs, learning_rate until "
            "lr_decay_start_epochs, linear to min_lr at lr_decay_end_epochs, min_lr after."
        },
    )
    lr_warmup_epochs: float = field(default=0.0, metadata={"help": "Linear warm-up from 0 (Oct-2025 code; now 0)."})
    lr_decay_start_epochs: float = field(default=40.0, metadata={"help": "Constant lr until this epoch (paper: 40)."})
    lr_decay_end_epochs: float = field(default=800.0, metadata={"help": "min_lr from this epoch on (paper: 800)."})
    min_lr: float = field(default=2e-5, metadata={"help": "Final lr of the published schedule (paper: 2e-5)."})
    ema_decay: float = field(default=0.9995, metadata={"help": "EMA decay every step (paper: 0.9995); published."})

    time_dist_type: str = field(
        default="logit-normal_0_1",
        metadata={"help": "Official name: logit-normal_<mean>_<std> (current configs: _0_1) or uniform (Oct 2025)."},
    )
    time_max: float = field(default=0.999, metadata={"help": "Training t in [0, time_max] (RAE time, 1 = noise)."})
    time_shift_dim: int | None = field(
        default=None, metadata={"help": "Dimension of the shift sqrt(dim / base); default the latent's C*h*w."}
    )
    time_shift_base: float = field(default=4096.0, metadata={"help": "Base of the time shift (paper: 4096)."})
    class_dropout_prob: float | None = field(
        default=None, metadata={"help": "Label dropout for CFG; default the model config's (0.1)."}
    )

    sample_steps: int = field(default=49, metadata={"help": "Euler steps of samples (official 50-point grid: 49)."})
    sampler: str = field(default="euler", metadata={"help": "euler (published) or heun."})
    guidance: str = field(default="none", metadata={"help": "none, cfg or autoguidance (needs a guide model)."})
    guidance_scale: float = field(default=1.0, metadata={"help": "Guidance scale; <= 1 samples unguided."})
    guidance_interval: list[float] = field(
        default_factory=lambda: [0.0, 1.0], metadata={"help": "Guide where t_min <= t <= t_max (RAE time)."}
    )
    num_grid_samples: int = field(default=16, metadata={"help": "Images of the fixed-seed sample grid (0: none)."})

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.time_max < 1:
            raise ValueError(f"time_max={self.time_max} must be in (0, 1).")
        FlowMatching.rae_stage2(self.time_dist_type, t_max=self.time_max)  # names a bad time_dist_type
        if self.time_shift_dim is not None and self.time_shift_dim < 1:
            raise ValueError(f"time_shift_dim={self.time_shift_dim} must be a positive integer.")
        if self.time_shift_base <= 0:
            raise ValueError(f"time_shift_base={self.time_shift_base} must be positive.")
        if self.class_dropout_prob is not None and not 0 <= self.class_dropout_prob < 1:
            raise ValueError(f"class_dropout_prob={self.class_dropout_prob} must be in [0, 1).")
        if self.lr_warmup_epochs < 0 or self.lr_decay_start_epochs < self.lr_warmup_epochs:
            raise ValueError(
                f"lr_warmup_epochs={self.lr_warmup_epochs} must be in [0, lr_decay_start_epochs="
                f"{self.lr_decay_start_epochs}]."
            )
        if self.lr_decay_end_epochs < self.lr_decay_start_epochs:
            raise ValueError(
                f"lr_decay_end_epochs={self.lr_decay_end_epochs} must be >= lr_decay_start_epochs="
                f"{self.lr_decay_start_epochs}."
            )
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler={self.sampler!r} must be one of {SAMPLERS}.")
        if self.guidance not in GUIDANCE_KINDS:
            raise ValueError(f"guidance={self.guidance!r} must be one of {GUIDANCE_KINDS}.")
        if self.sample_steps < 1 or self.num_grid_samples < 0:
            raise ValueError("sample_steps must be >= 1 and num_grid_samples >= 0.")
        lo_hi = self.guidance_interval
        if len(lo_hi) != 2 or not 0 <= lo_hi[0] <= lo_hi[1] <= 1:
            raise ValueError(f"guidance_interval={lo_hi} must be two numbers 0 <= t_min <= t_max <= 1.")


__all__ = ["GUIDANCE_KINDS", "DiTTrainingArguments"]
