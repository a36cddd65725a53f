"""`PruneTrainingArguments`: iterative pruning rounds (IMP / Refill / RSST) with weight rewinding, on top of the
shared `BaseTrainingArguments`. Optimizer, learning-rate schedule and warmup restart every round (as the seed)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..prune.refill import CRITERIA
from ..prune.rsst import RSST_CURVES
from ..prune.structure import DEFAULT_TARGETS
from .base_config import BaseTrainingArguments

PRUNE_METHODS = ("rsst", "refill", "magnitude", "none")


@dataclass
class PruneTrainingArguments(BaseTrainingArguments):
    """Arguments of a pruning run; `num_train_epochs` / `max_steps` are per round."""

    prune_method: str = field(
        default="rsst",
        metadata={"help": f"One of {PRUNE_METHODS}: RSST, IMP + Refill, global magnitude IMP, or plain training."},
    )
    prune_rounds: int = field(default=16, metadata={"help": "Training rounds; round 0 is dense (the seed: 16)."})
    prune_rate: float = field(
        default=0.2, metadata={"help": "Fraction of the still-kept targeted weights removed after each round."}
    )
    fillback_rate: float | None = field(
        default=None,
        metadata={
            "help": "Refill+ extra channels: keep int(n + (C - n) * fillback_rate) units per layer. Default 0.2 for "
            "refill (the launcher's default) and 0.0 for rsst (the seed computes R with fillback 0)."
        },
    )
    criterion: str = field(default="l1", metadata={"help": f"Refill unit ranking, one of {CRITERIA}."})
    reg_curve: str = field(
        default="exp_custom_exponents", metadata={"help": f"RSST penalty schedule, one of {RSST_CURVES}."}
    )
    reg_granularity: float = field(default=1.0, metadata={"help": "RSST penalty scale g (reg_granularity_prune)."})
    reg_exponent: float = field(default=4.0, metadata={"help": "RSST exponent k of exp_custom_exponents."})
    rewind_step: int = field(
        default=0,
        metadata={"help": "Rewind point: weights after this many optimizer steps of round 0 (0: the initial weights)."},
    )
    rewind_epoch: int | None = field(
        default=None, metadata={"help": "Rewind to the start of this epoch of round 0 instead (SLTH rewind_lt: 16)."}
    )
    prune_targets: list[str] = field(
        default_factory=lambda: list(DEFAULT_TARGETS),
        metadata={"help": "Module-name suffixes of the nn.Linear layers that are pruned."},
    )
    auto: str | None = field(
        default=None, metadata={"help": "Accepted for the seed launcher's users and ignored (there is no prompt)."}
    )
    batch_eval_metrics: bool = field(default=True, metadata={"help": "Accuracy is accumulated batch by batch."})

    def __post_init__(self):
        super().__post_init__()
        if self.prune_method not in PRUNE_METHODS:
            raise ValueError(f"prune_method must be one of {PRUNE_METHODS}, got {self.prune_method!r}.")
        if self.prune_rounds < 1:
            raise ValueError(f"prune_rounds must be >= 1, got {self.prune_rounds}.")
        if not 0.0 <= self.prune_rate < 1.0:
            raise ValueError(f"prune_rate must be in [0, 1), got {self.prune_rate}.")
        if self.fillback_rate is None:
            self.fillback_rate = 0.2 if self.prune_method == "refill" else 0.0
        if not 0.0 <= self.fillback_rate <= 1.0:
            raise ValueError(f"fillback_rate must be in [0, 1], got {self.fillback_rate}.")
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}, got {self.criterion!r}.")
        if self.reg_curve not in RSST_CURVES:
            raise ValueError(f"reg_curve must be one of {RSST_CURVES}, got {self.reg_curve!r}.")
        if self.reg_granularity < 0:
            raise ValueError(f"reg_granularity must be >= 0, got {self.reg_granularity}.")
        if self.rewind_step < 0 or (self.rewind_epoch is not None and self.rewind_epoch < 0):
            raise ValueError("rewind_step and rewind_epoch must be >= 0.")
        if not self.prune_targets:
            raise ValueError("prune_targets must name at least one module suffix.")
