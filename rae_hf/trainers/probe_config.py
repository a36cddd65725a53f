"""`ProbeTrainingArguments`: the arguments of `run_probe` that drive training — the linear-probe protocol, its head
solver and grid, kNN, and the fine-tuning settings of `lora`/`full` — on top of the shared `BaseTrainingArguments`.

In `linear` mode the heads follow their own solver (`head_solver`: L-BFGS with an `l2_grid` sweep, or the SGD grid
with `learning_rates`, `head_*`, `num_train_epochs`/`max_steps`/`min_head_steps` and `per_device_train_batch_size`);
`per_device_eval_batch_size` is the batch of feature extraction. `lora`/`full` are `Trainer` runs with
`learning_rate`, `head_lr_multiplier`, `layer_decay`, `min_finetune_steps`, etc.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from transformers.trainer_utils import SchedulerType

from ..models.presets import apply_preset
from ..probe.knn import DEFAULT_KS
from ..probe.logistic import DEFAULT_L2_GRID
from ..probe.protocols import FINETUNE_DEFAULTS, LINEAR_PROTOCOLS, preset
from .base_config import BaseTrainingArguments

__all__ = ["PRESET_FIELDS", "ProbeTrainingArguments"]

# Placeholders TrainingArguments validates before `resolve_defaults` puts the preset values in.
_PLACEHOLDERS = {
    "num_train_epochs": 3.0,
    "per_device_train_batch_size": 8,
    "learning_rate": 5e-5,
    "warmup_steps": 0.0,
    "lr_scheduler_type": "linear",
    "weight_decay": 0.0,
}
PRESET_FIELDS = tuple(
    dict.fromkeys(name for values in (*LINEAR_PROTOCOLS.values(), *FINETUNE_DEFAULTS.values()) for name in values)
)


@dataclass
class ProbeTrainingArguments(BaseTrainingArguments):
    """`BaseTrainingArguments` plus the linear-probe protocol, its head solver and grid, kNN and fine-tuning settings.

    Arguments left unset (None) take the values of `--protocol` (linear mode) or of the fine-tuning mode (see
    `rae_hf.probe.protocols`); explicit values always win. `resolve_defaults(mode)` applies them (done for `linear`
    at construction, and again by `run_probe` for the run's mode).
    """

    protocol: Literal["default", "dinov2", "mae"] = field(
        default="default",
        metadata={
            "help": "Linear-probe protocol: default (L-BFGS logistic regression with an L2 sweep selected on a "
            "held-out part of train: converged on any dataset size), dinov2 (the paper's SGD grid, best on "
            "validation) or mae (BatchNorm + LARS). Explicit arguments override the protocol's values."
        },
    )
    head_solver: Literal["lbfgs", "sgd"] | None = field(
        default=None,
        metadata={"help": "lbfgs: full-batch L-BFGS with an L2 sweep; sgd: the minibatch learning-rate grid."},
    )
    selection: Literal["holdout", "validation"] | None = field(
        default=None,
        metadata={
            "help": "Where the head (l2 / learning rate, feature variant) is selected: on a held-out part of train "
            "(default protocol) or on validation (the papers' protocols; optimistic)."
        },
    )
    holdout_fraction: float = field(
        default=0.1, metadata={"help": "Fraction of every class of train held out for --selection holdout."}
    )
    l2_grid: list[float] = field(
        default_factory=lambda: list(DEFAULT_L2_GRID),
        metadata={"help": "L2 strengths swept by the lbfgs solver (objective: mean cross-entropy + l2/2 ||W||^2)."},
    )
    lbfgs_max_iter: int = field(default=1000, metadata={"help": "Iteration limit of each L-BFGS solve."})
    lbfgs_tolerance: float = field(
        default=1e-4, metadata={"help": "L-BFGS stops when max |gradient| is below this (scikit-learn's default)."}
    )
    lbfgs_chunk_size: int = field(
        default=65536, metadata={"help": "Rows per chunk of the full-batch gradient (bounds memory, not the result)."}
    )
    learning_rates: list[float] | None = field(
        default=None,
        metadata={"help": "sgd solver: base learning rates of the head grid (x batch/256 with --scale_lr_by_batch)."},
    )
    min_head_steps: int | None = field(
        default=None,
        metadata={"help": "sgd solver: at least this many optimizer steps whatever the epochs give (default: 2000)."},
    )
    head_optimizer: Literal["sgd", "lars", "adamw"] | None = field(
        default=None, metadata={"help": "sgd solver: head optimizer, sgd (momentum; DINOv2), lars (MAE) or adamw."}
    )
    head_momentum: float | None = field(default=None, metadata={"help": "Momentum of sgd/lars (0.9)."})
    head_norm: Literal["none", "batchnorm"] | None = field(
        default=None, metadata={"help": "batchnorm: BatchNorm1d(affine=False, eps=1e-6) before each head (MAE)."}
    )
    head_init: Literal["normal", "trunc_normal"] | None = field(
        default=None, metadata={"help": "Head weight init: normal (DINOv2) or trunc_normal (MAE)."}
    )
    head_init_std: float | None = field(default=None, metadata={"help": "Std of the head weight init (0.01)."})
    head_warmup_epochs: float | None = field(
        default=None, metadata={"help": "Linear warmup of the sgd heads (MAE: 10 of 90)."}
    )
    scale_lr_by_batch: bool | None = field(
        default=None, metadata={"help": "Use base lr x batch_size / 256 (DINOv2/MAE linear scaling rule)."}
    )
    head_lr_multiplier: float | None = field(
        default=None, metadata={"help": "lora/full: the new head's lr is --learning_rate x this (default 10)."}
    )
    layer_decay: float | None = field(
        default=None,
        metadata={
            "help": "lora/full: layer-wise lr decay, block i of L gets lr x decay^(L - i), embeddings decay^(L+1) "
            "(MAE/BEiT; default: 0.75 full, 1.0 lora)."
        },
    )
    min_finetune_steps: int | None = field(
        default=None,
        metadata={"help": "lora/full: at least this many optimizer steps whatever the epochs give (default 1000)."},
    )
    knn_k: list[int] = field(
        default_factory=lambda: list(DEFAULT_KS), metadata={"help": "kNN neighbour counts (clipped to train size)."}
    )
    knn_temperature: float = field(default=0.07, metadata={"help": "kNN vote temperature: weight exp(sim / T)."})
    run_knn: bool = field(default=True, metadata={"help": "linear mode: also report kNN on the same features."})
    num_train_epochs: float | None = field(
        default=None, metadata={"help": "Epochs (sgd heads: 10 / MAE 90; lora/full: 10, see --min_finetune_steps)."}
    )
    per_device_train_batch_size: int | None = field(
        default=None, metadata={"help": "Batch size (sgd heads: 256 / MAE 16384; lora/full: 64)."}
    )
    learning_rate: float | None = field(
        default=None, metadata={"help": "lora/full: backbone learning rate (lora 1e-3, full 2e-4; AdamW)."}
    )
    warmup_steps: float | None = field(
        default=None, metadata={"help": "lora/full: warm-up steps, or a fraction of all steps when < 1 (0.1)."}
    )
    lr_scheduler_type: str | None = field(default=None, metadata={"help": "lora/full: lr schedule (cosine)."})
    weight_decay: float | None = field(
        default=None, metadata={"help": "lora/full: AdamW weight decay (lora 0.01, full 0.05); sgd heads: 0."}
    )
    per_device_eval_batch_size: int = field(
        default=64, metadata={"help": "Batch size of feature extraction and evaluation."}
    )

    def __post_init__(self):
        if self.label_names is None:
            self.label_names = ["labels"]
        self._explicit = {name for name in PRESET_FIELDS if getattr(self, name) is not None}
        for name, value in _PLACEHOLDERS.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        super().__post_init__()
        self.resolve_defaults("linear")
        if not self.knn_k or min(self.knn_k) < 1 or self.knn_temperature <= 0:
            raise ValueError(f"Invalid kNN settings k={self.knn_k}, temperature={self.knn_temperature}.")
        if not 0 < self.holdout_fraction < 1:
            raise ValueError(f"--holdout_fraction must be in (0, 1), got {self.holdout_fraction}.")
        if not self.l2_grid or min(self.l2_grid) < 0 or len(set(self.l2_grid)) != len(self.l2_grid):
            raise ValueError(f"--l2_grid must be distinct values >= 0, got {self.l2_grid}.")
        if self.lbfgs_max_iter < 1 or self.lbfgs_tolerance <= 0 or self.lbfgs_chunk_size < 1:
            raise ValueError("Need --lbfgs_max_iter >= 1, --lbfgs_tolerance > 0 and --lbfgs_chunk_size >= 1.")

    def resolve_defaults(self, mode: str) -> ProbeTrainingArguments:
        """Fill every argument the user did not give with the value of `mode` (and `--protocol` in linear mode)."""
        values = preset(mode, self.protocol)  # checks both names
        for name in values.keys() - self._explicit:
            setattr(self, name, None)  # the preset of this mode replaces every value the user did not give
        apply_preset(self, {self.protocol: values}, self.protocol, "--protocol")
        if isinstance(self.learning_rates, list):
            self.learning_rates = list(self.learning_rates)  # never share the protocol table's list
        if isinstance(self.lr_scheduler_type, str):
            self.lr_scheduler_type = SchedulerType(self.lr_scheduler_type)
        if mode in ("linear", "knn"):  # the protocol's SGD fields are set even when lbfgs runs: check them
            if not self.learning_rates or min(self.learning_rates) <= 0:
                raise ValueError(f"--learning_rates must be positive, got {self.learning_rates}.")
            if len(set(self.learning_rates)) != len(self.learning_rates):
                raise ValueError(f"--learning_rates has duplicates: {self.learning_rates}.")
            if not 0 <= self.head_momentum < 1 or self.head_init_std <= 0 or self.head_warmup_epochs < 0:
                raise ValueError("Need 0 <= --head_momentum < 1, --head_init_std > 0 and --head_warmup_epochs >= 0.")
            if self.min_head_steps < 0:
                raise ValueError(f"--min_head_steps must be >= 0, got {self.min_head_steps}.")
        else:
            if self.learning_rate <= 0 or self.head_lr_multiplier <= 0:
                raise ValueError(
                    f"--learning_rate and --head_lr_multiplier must be positive, got {self.learning_rate} and "
                    f"{self.head_lr_multiplier}."
                )
            if not 0 < self.layer_decay <= 1:
                raise ValueError(f"--layer_decay must be in (0, 1], got {self.layer_decay}.")
            if self.min_finetune_steps < 0:
                raise ValueError(f"--min_finetune_steps must be >= 0, got {self.min_finetune_steps}.")
        if self.num_train_epochs <= 0 and self.max_steps <= 0:
            raise ValueError(f"--num_train_epochs must be positive (or give --max_steps), got {self.num_train_epochs}.")
        if self.per_device_train_batch_size < 1:
            raise ValueError(f"--per_device_train_batch_size must be >= 1, got {self.per_device_train_batch_size}.")
        return self
