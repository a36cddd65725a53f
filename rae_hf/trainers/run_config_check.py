"""The run configuration a checkpoint records (`run_config.json` inside `checkpoint-N`), and the resume check that
refuses a changed run unless `--allow_config_change` is given (then the new optimizer hyperparameters and schedule
are applied from the current step).

The record holds every argument dataclass of the run (the script's `run_config.json` sections, the training
arguments taken fresh from the trainer) and the model's config. Everything in it defines the run except the fields
named in `FREE_FIELDS` / `FREE_PREFIXES` / `FREE_SECTIONS` below: the one place that lists what may change on resume.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

logger = logging.getLogger(__name__)
RUN_CONFIG_NAME = "run_config.json"
MODEL_SECTION = "model_config"

# Fields that may change when a run is resumed: logging, evaluation/saving cadence, where and how results are written
# or published, run length (`max_steps` / `num_train_epochs` extend a run), data loading workers, the resume/overwrite
# switches themselves, and hardware/speed settings that do not change the maths. Everything else (model config,
# optimizer and schedule, batch and accumulation, seed, data and transforms, method parameters) defines the run.
FREE_FIELDS = frozenset(
    {
        "output_dir",
        "overwrite_output_dir",
        "resume_from_checkpoint",
        "allow_config_change",
        "allow_partial_resume",
        "report_to",
        "run_name",
        "project",
        "push_to_hub",
        "max_steps",
        "num_train_epochs",
        "disable_tqdm",
        "log_csv",
        "log_level",
        "log_level_replica",
        "log_on_each_node",
        "profile_steps",
        "sample_every",
        "inception_weights",
        "do_train",
        "do_eval",
        "do_predict",
        "per_device_eval_batch_size",
        "prediction_loss_only",
        "skip_memory_metrics",
        "use_cpu",
        "tf32",
        "accelerator_config",
        "local_rank",
        "gradient_checkpointing",
        "gradient_checkpointing_kwargs",
        "torch_empty_cache_steps",
        "metric_for_best_model",
        "greater_is_better",
        "load_best_model_at_end",
        "restore_callback_states_from_checkpoint",
        "check_data_pipeline",
        # model config bookkeeping
        "transformers_version",
        "architectures",
        "dtype",
        "torch_dtype",
    }
)
FREE_PREFIXES = ("logging_", "eval_", "save_", "hub_", "push_to_hub", "dataloader_", "fid_", "trackio_", "ddp_", "_")
FREE_SECTIONS = ("Eval",)  # argument sections whose name contains one of these (evaluation only: e.g. EvalArguments)


def is_free(section: str, name: str) -> bool:
    """Whether `section.name` may change on resume (see `FREE_FIELDS`)."""
    if any(part in section for part in FREE_SECTIONS):
        return True
    return name in FREE_FIELDS or name.startswith(FREE_PREFIXES)


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def run_record(args: Any, model: Any) -> dict[str, dict]:
    """The resolved configuration of this run: the script's `output_dir/run_config.json` sections (if written by
    `rae_hf.cli.save_run_config`), the trainer's arguments (fresh) and the model's config."""
    record: dict[str, dict] = {}
    path = os.path.join(args.output_dir, RUN_CONFIG_NAME)
    if os.path.isfile(path):
        with open(path) as f:
            record.update({k: v for k, v in json.load(f).items() if isinstance(v, dict)})
    record[type(args).__name__] = args.to_dict()
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        record[MODEL_SECTION] = config.to_dict()
    return _plain(record)


def write_run_record(folder: str, record: dict) -> None:
    with open(os.path.join(folder, RUN_CONFIG_NAME), "w") as f:
        json.dump(record, f, indent=2)


def config_changes(old: dict, new: dict) -> list[tuple[str, str, Any, Any]]:
    """`(section, field, old, new)` for every run-defining field that differs (missing counts as a difference)."""
    changes = []
    for section in sorted(set(old) | set(new)):
        before, after = old.get(section, {}), new.get(section, {})
        for name in sorted(set(before) | set(after)):
            if is_free(section, name):
                continue
            if before.get(name, "<absent>") != after.get(name, "<absent>"):
                changes.append((section, name, before.get(name, "<absent>"), after.get(name, "<absent>")))
    return changes


def changes_table(changes: list[tuple[str, str, Any, Any]]) -> str:
    return "\n".join(f"  {name}: {old!r} -> {new!r}   [{section}]" for section, name, old, new in changes)


def check_resume_config(checkpoint: str, record: dict, allow: bool) -> list[tuple[str, str, Any, Any]]:
    """Compare `record` with the configuration `checkpoint` recorded; raise `ValueError` with a table of old -> new
    values unless `allow`. Returns the changes (empty when none, or when the checkpoint recorded nothing)."""
    path = os.path.join(checkpoint, RUN_CONFIG_NAME)
    if not os.path.isfile(path):
        logger.warning(
            "%s records no run configuration (older checkpoint): a changed configuration goes unchecked.", checkpoint
        )
        return []
    with open(path) as f:
        changes = config_changes(json.load(f), record)
    if not changes:
        return []
    table = changes_table(changes)
    if not allow:
        raise ValueError(
            f"The run configuration differs from the one {checkpoint} was trained with (old -> new):\n{table}\n"
            "Resume with the same values, or pass --allow_config_change true to continue with the new ones (the "
            "optimizer hyperparameters and the schedule are rebuilt from them at the current step)."
        )
    logger.warning("Resuming %s with a changed configuration (--allow_config_change):\n%s", checkpoint, table)
    return changes


def optimizer_hyperparameters(optimizer: torch.optim.Optimizer) -> list[dict]:
    """The hyperparameters of each parameter group (all but `params` and the scheduled `lr`)."""
    return [{k: v for k, v in group.items() if k not in ("params", "lr")} for group in optimizer.param_groups]


def apply_new_hyperparameters(optimizer: torch.optim.Optimizer, scheduler: Any, fresh: list[dict]) -> None:
    """After a resume loaded the old optimizer and schedule: put back the hyperparameters `fresh` (taken from the
    optimizer built from the new arguments) and set each group's lr to the new schedule at the current step."""
    if len(fresh) != len(optimizer.param_groups):
        raise ValueError("The new configuration changes the optimizer's parameter groups: it cannot be resumed.")
    for group, values in zip(optimizer.param_groups, fresh, strict=True):
        group.update(values)
    if scheduler is None:
        return
    if "initial_lr" in optimizer.param_groups[0]:
        scheduler.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
    if isinstance(scheduler, LambdaLR):  # closed form: base lr x factor at the current step
        lrs = [
            base * fn(scheduler.last_epoch) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)
        ]
    else:  # schedulers that compute the lr from the trainer's arguments at each step take the new ones by themselves
        lrs = [group["lr"] for group in optimizer.param_groups]
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    scheduler._last_lr = list(lrs)
