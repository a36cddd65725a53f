"""The parts of `transformers.Trainer` that are not public API and that rae_hf's trainers rely on, checked once at
import against the installed transformers (an error names the missing hook, the installed version and the tested
range), and `set_initial_training_values`' result unpacked by name in one place.

Public hooks (callbacks, `compute_loss`, `training_step`, `create_optimizer`, `create_scheduler`, `log`,
`save_model`, `create_model_card`) are preferred; what remains here has no public equivalent (see `BaseTrainer`).
"""

from __future__ import annotations

import inspect
import logging
import re
from typing import Any, NamedTuple

import transformers
from packaging.version import Version
from transformers import Trainer

logger = logging.getLogger(__name__)

# The range `setup.py` pins. Lower bound: the first release with everything rae_hf uses (`_clip_grad_norm` came in
# 5.3.0, the configs' `SubConfigSpec` in 5.20.0); upper bound: the next minor that has not been tested (the suite runs
# on 5.25; the trainer tests also pass on 5.20.0).
TRANSFORMERS_MIN_VERSION = "5.20.0"
TRANSFORMERS_MAX_VERSION = "5.26.0"  # exclusive
SUPPORTED_TRANSFORMERS = f">={TRANSFORMERS_MIN_VERSION},<{TRANSFORMERS_MAX_VERSION}"

# Every non-public `Trainer` method that a rae_hf trainer overrides or calls -> the parameters it relies on.
PRIVATE_TRAINER_HOOKS: dict[str, tuple[str, ...]] = {
    "_maybe_log_save_evaluate": ("tr_loss", "grad_norm", "model", "trial", "epoch"),
    "_get_output_dir": ("trial",),
    "_save_checkpoint": ("model", "trial"),
    "_save": ("output_dir", "state_dict"),
    "_load_from_checkpoint": ("resume_from_checkpoint", "model"),
    "_issue_warnings_after_load": ("load_result",),
    "_save_optimizer_and_scheduler": ("output_dir",),
    "_load_optimizer_and_scheduler": ("checkpoint",),
    "_clip_grad_norm": ("model",),
    "_prepare_inputs": ("inputs",),
    "set_initial_training_values": ("args", "dataloader"),
    "get_batch_samples": ("epoch_iterator", "num_batches", "device"),
}
# Set by our `create_scheduler` overrides so that Trainer rebuilds the schedule on a second `train()`.
PRIVATE_TRAINER_ATTRIBUTES = ("_created_lr_scheduler",)


class TrainingValues(NamedTuple):
    """`Trainer.set_initial_training_values`' result, by name (the order of transformers' return tuple)."""

    num_train_epochs: int
    num_update_steps_per_epoch: int
    num_examples: int
    num_train_samples: int
    total_train_batch_size: int
    steps_in_epoch: int
    max_steps: int


def training_values(values: tuple) -> TrainingValues:
    """Name the fields of `Trainer.set_initial_training_values(...)`'s tuple (checked against its source)."""
    if len(values) != len(TrainingValues._fields):
        raise TypeError(
            f"Trainer.set_initial_training_values returned {len(values)} values, rae_hf expects "
            f"{TrainingValues._fields}: {_range_advice()}"
        )
    return TrainingValues(*values)


def _range_advice() -> str:
    return (
        f"transformers {transformers.__version__} is installed; rae_hf is tested with transformers "
        f"{SUPPORTED_TRANSFORMERS} (pip install 'transformers{SUPPORTED_TRANSFORMERS}')."
    )


def _returned_names(method: Any) -> tuple[str, ...] | None:
    """The names in the last `return (a, b, ...)` of a method's source, or None when it has no such tuple."""
    try:
        source = inspect.getsource(method)
    except (OSError, TypeError):
        return None
    tuples = re.findall(r"return \(([\w\s,]+)\)", source)
    return tuple(name.strip() for name in tuples[-1].split(",") if name.strip()) if tuples else None


def contract_problems(trainer_class: type = Trainer) -> list[str]:
    """What the installed `trainer_class` lacks among the hooks, parameters and return values rae_hf relies on."""
    problems = []
    for name, parameters in PRIVATE_TRAINER_HOOKS.items():
        method = getattr(trainer_class, name, None)
        if not callable(method):
            problems.append(f"Trainer.{name} is missing")
            continue
        accepted = inspect.signature(method).parameters
        absent = [p for p in parameters if p not in accepted]
        if absent:
            problems.append(f"Trainer.{name} has no parameter(s) {absent}")
    returned = _returned_names(getattr(trainer_class, "set_initial_training_values", None))
    if returned is not None and returned != TrainingValues._fields:
        problems.append(f"Trainer.set_initial_training_values returns {returned}, not {TrainingValues._fields}")
    return problems


def check_trainer_contract(trainer_class: type = Trainer) -> None:
    """Raise ImportError naming each missing hook when the installed transformers cannot run rae_hf's trainers;
    warn when its version is outside the tested range but every hook is there."""
    problems = contract_problems(trainer_class)
    if problems:
        raise ImportError(
            "rae_hf's trainers override non-public transformers.Trainer hooks that this transformers lacks: "
            + "; ".join(problems)
            + ". "
            + _range_advice()
        )
    version = Version(transformers.__version__)
    if not Version(TRANSFORMERS_MIN_VERSION) <= version < Version(TRANSFORMERS_MAX_VERSION):
        logger.warning("Untested transformers version: %s", _range_advice())
