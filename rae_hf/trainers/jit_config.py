"""`JiTTrainingArguments`: JiT's flow-matching objective, two EMAs, warm-up in epochs, the lr rule and in-training
sampling/evaluation on top of the shared base arguments. Defaults are the official ImageNet recipe."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..diffusion import SAMPLERS, TARGETS
from .base_config import BaseTrainingArguments


@dataclass
class JiTTrainingArguments(BaseTrainingArguments):
    """Arguments of `JiTTrainer` (paper defaults: AdamW (0.9, 0.95), no weight decay, no clipping, 5 warm-up epochs
    then a constant lr, EMA 0.9999 and 0.9996, logit-normal t (-0.8, 0.8), x-prediction with the v-loss)."""

    learning_rate: float = field(default=2e-4, metadata={"help": "AdamW lr (paper: 2e-4 at batch 1024)."})
    base_learning_rate: float | None = field(
        default=None,
        metadata={"help": "If set, learning_rate = base_learning_rate x total batch / 256 (paper: 5e-5)."},
    )
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2 (paper: 0.95)."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (paper: 0)."})
    max_grad_norm: float = field(default=0.0, metadata={"help": "Gradient clipping; 0 = none (paper)."})
    lr_scheduler_type: str = field(
        default="constant_with_warmup", metadata={"help": "Paper: linear warm-up from 0, then constant."}
    )
    warmup_epochs: float = field(
        default=5.0, metadata={"help": "Linear warm-up length in epochs (paper: 5); 0: use warmup_steps."}
    )
    ema_decay: float = field(default=0.9999, metadata={"help": "First EMA (published, sampled; paper 0.9999)."})
    ema_decay2: float = field(default=0.9996, metadata={"help": "Second EMA (paper 0.9996); 0 disables it."})

    prediction_type: str | None = field(
        default=None, metadata={"help": "Network output x/eps/v; default: the model config's (x)."}
    )
    loss_type: str = field(default="v", metadata={"help": "Loss space x/eps/v (paper: v)."})
    p_mean: float = field(default=-0.8, metadata={"help": "Mean of logit(t) (paper: -0.8)."})
    p_std: float = field(default=0.8, metadata={"help": "Std of logit(t) (paper: 0.8)."})
    noise_scale: float | None = field(
        default=None, metadata={"help": "Noise std; default: the model config's (image_size / 256)."}
    )
    t_eps: float | None = field(default=None, metadata={"help": "Clamp of 1 - t; default: the model config's (0.05)."})
    label_drop_prob: float = field(default=0.1, metadata={"help": "Label dropout for CFG (paper: 0.1)."})
    unconditional: bool = field(default=False, metadata={"help": "Ignore labels: train with the null class only."})

    sample_steps: int = field(default=50, metadata={"help": "ODE steps of in-training sampling (paper: 50)."})
    sampler: str = field(default="heun", metadata={"help": "heun (official) or euler."})
    guidance_scale: float = field(default=1.0, metadata={"help": "CFG scale of in-training samples/FID."})
    guidance_interval: list[float] = field(
        default_factory=lambda: [0.1, 1.0], metadata={"help": "CFG interval (lo, hi) of t (released: 0.1 1.0)."}
    )
    num_grid_samples: int = field(default=16, metadata={"help": "Images in the fixed-seed sample grid."})
    text_metrics_steps: int = field(
        default=0, metadata={"help": "Text task: recovery accuracies every N steps (0: at the end only)."}
    )
    text_metrics_samples: int = field(default=64, metadata={"help": "Text task: texts per split for the metrics."})
    save_every_epochs: float = field(
        default=0.0, metadata={"help": "Save a checkpoint every N epochs (overrides save_steps; 0: off)."}
    )
    save_best_loss: bool = field(
        default=False, metadata={"help": "Save the model with the lowest epoch-mean loss to output_dir/best."}
    )
    compile_blocks: bool = field(
        default=False,
        metadata={"help": "torch.compile each JiT block (equal to eager; --torch_compile compiles the whole model)."},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.base_learning_rate is not None:
            if self.base_learning_rate <= 0:
                raise ValueError(f"base_learning_rate={self.base_learning_rate} must be positive.")
            batch = self.per_device_train_batch_size * self.world_size * self.gradient_accumulation_steps
            self.learning_rate = self.base_learning_rate * batch / 256
        if self.prediction_type is not None and self.prediction_type not in TARGETS:
            raise ValueError(f"prediction_type={self.prediction_type!r} must be one of {TARGETS}.")
        if self.loss_type not in TARGETS:
            raise ValueError(f"loss_type={self.loss_type!r} must be one of {TARGETS}.")
        if self.p_std <= 0:
            raise ValueError(f"p_std={self.p_std} must be positive.")
        if self.noise_scale is not None and self.noise_scale <= 0:
            raise ValueError(f"noise_scale={self.noise_scale} must be positive.")
        if self.t_eps is not None and not 0 < self.t_eps < 1:
            raise ValueError(f"t_eps={self.t_eps} must be in (0, 1).")
        if not 0 <= self.label_drop_prob < 1:
            raise ValueError(f"label_drop_prob={self.label_drop_prob} must be in [0, 1).")
        if not 0 <= self.ema_decay2 < 1:
            raise ValueError(f"ema_decay2={self.ema_decay2} must be in [0, 1).")
        if self.warmup_epochs < 0 or self.save_every_epochs < 0:
            raise ValueError("warmup_epochs and save_every_epochs must be >= 0.")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler={self.sampler!r} must be one of {SAMPLERS}.")
        if self.sample_steps < 1:
            raise ValueError(f"sample_steps={self.sample_steps} must be >= 1.")
        lo_hi = self.guidance_interval
        if len(lo_hi) != 2 or not 0 <= lo_hi[0] <= lo_hi[1] <= 1:
            raise ValueError(f"guidance_interval={lo_hi} must be two numbers 0 <= lo <= hi <= 1.")
        for name in ("num_grid_samples", "text_metrics_steps", "text_metrics_samples"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0.")


__all__ = ["JiTTrainingArguments"]
