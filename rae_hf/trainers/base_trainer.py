"""`BaseTrainer`: what every rae_hf trainer adds to `transformers.Trainer`.

- Metrics: `record_metrics(...)` keeps detached tensors on the device; they are averaged over steps and processes
  only when Trainer logs (no per-step host sync). `record_images(...)` gives images/s and skipped-image totals.
- Non-finite state: the loss and every `record_metrics` term feed a device flag (first bad step) each optimizer step
  without a sync; it is read at each log, before every checkpoint (with the weights, optimizer and registered states:
  `finite_state`) and at the end, so no saved checkpoint holds a NaN and the error names the last finite one.
- Resume: each checkpoint records the run configuration; a changed one is refused (`run_config_check`).
- Extra checkpoint state: `register_state(name, obj)` (EMAs, a discriminator, a DINO centre, pruning masks...) is
  saved into every checkpoint as `<name>.safetensors` (a flat dict of tensors) or `<name>.pt` (anything else,
  loaded with `weights_only=True`) and restored on resume.
- Checkpoints are written into a staging folder and renamed into place with a completeness marker; `last` means the
  newest complete one; a resume lacking optimizer/scheduler/RNG/extra state is refused (`--allow_partial_resume`).
- Exact resume at any step: training data augmentations depend on (seed, epoch, index) only (`data.seeded`).
- SIGTERM/SIGINT: a checkpoint is saved after the current step and the run stops (`--save_on_signal`).
- A new run never writes over a finished one in `output_dir` (`--overwrite_output_dir` to replace it).

Non-public `Trainer` hooks that remain (no public hook does the job; all are checked at import against the installed
transformers by `trainer_contract`, with the tested range in the error):
- `_maybe_log_save_evaluate`: the only per-optimizer-step place that sees the accumulated loss tensor (finite flag).
- `_get_output_dir`, `_save_checkpoint`: write each checkpoint into a staging folder, then rename it into place.
- `_save_optimizer_and_scheduler`, `_load_optimizer_and_scheduler`: registered extra state travels with them.
- `_save`: a final (non-checkpoint) folder gets `training_args.json` instead of the pickled `training_args.bin`.
- `_load_from_checkpoint`: resume weights through `from_pretrained` (legacy names mapped back), reported by
  `_issue_warnings_after_load`.
- `set_initial_training_values`: the only place that knows steps per epoch before the schedules are built; unpacked
  by name (`TrainingValues`) and passed to `on_training_values`, the hook method trainers override.
- `get_batch_samples`: drops batches whose images were all undecodable before they reach the model.
- Method trainers: `_clip_grad_norm` (DINO per-module clipping, keeping Trainer's `grad_norm` log) and `_save` +
  `_issue_warnings_after_load` (RAE checkpoints leave out the frozen encoder). The epoch of the seeded augmentations
  is set by a callback (`on_epoch_begin`), not by `_run_epoch`.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

import safetensors.torch
import torch
from transformers import PreTrainedModel, Trainer, TrainingArguments
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, has_length, rotate_checkpoints

from ..callbacks import CSVLoggerCallback, EMACallback, TorchProfilerCallback
from ..data.collate import is_empty_batch
from ..data.images import BadImageError
from ..data.seeded import seeded_augmentations
from ..hub import write_model_card
from .base_callbacks import EpochCallback, SignalCallback
from .checkpoints import (
    explain_save_failure,
    last_complete_checkpoint,
    missing_resume_files,
    prepare_output_dir,
    write_complete_marker,
)
from .finite_state import all_finite, nested_tensors, nonfinite_states
from .run_config_check import (
    apply_new_hyperparameters,
    check_resume_config,
    optimizer_hyperparameters,
    run_record,
    write_run_record,
)
from .state_files import load_state_files, save_state_files
from .trainer_contract import PRIVATE_TRAINER_ATTRIBUTES, TrainingValues, check_trainer_contract, training_values

check_trainer_contract()
logger = logging.getLogger(__name__)
STAGING_DIR = ".staging"


class NonFiniteLossError(FloatingPointError):
    """Raised when a loss became NaN or infinite: nothing from that step on is saved."""


class TrainingInterrupted(KeyboardInterrupt):
    """Raised after a SIGTERM/SIGINT stopped training (a checkpoint of the last finished step was saved)."""


class StateHandle:
    """Adapts a pair of functions to the `state_dict`/`load_state_dict` protocol of `register_state`."""

    def __init__(self, get: Callable[[], Any], set: Callable[[Any], Any]):
        self.state_dict, self.load_state_dict = get, set


class BaseTrainer(Trainer):
    """Base `Trainer` of the library (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        missing = [name for name in PRIVATE_TRAINER_ATTRIBUTES if not hasattr(self, name)]
        if missing:
            raise TypeError(f"transformers.Trainer no longer sets {missing}, which rae_hf's schedulers set.")
        self.train_dataset = seeded_augmentations(self.train_dataset, self.args.data_seed or self.args.seed)
        self.training_values: TrainingValues | None = None  # set when training starts
        self._states: dict[str, Any] = {}
        self._metric_sums: dict[str, torch.Tensor] = {}
        self._metric_counts: dict[str, int] = {}
        self._images_since_log = 0
        self._last_log_time: float | None = None
        self._skipped_images: torch.Tensor | None = None
        self._nonfinite_step: torch.Tensor | None = None  # first optimizer step with a non-finite loss, -1: none
        self._bad_terms: torch.Tensor | None = None  # a recorded loss term (metric) was not finite
        self._staging = False
        self._run_record: dict = {}  # the resolved run configuration, recorded in every checkpoint
        self._config_changes: list = []  # changes accepted on resume with --allow_config_change
        self._signal = SignalCallback()
        self.add_callback(EpochCallback(self))
        if getattr(self.args, "save_on_signal", True):
            self.add_callback(self._signal)
        if getattr(self.args, "log_csv", False):
            self.add_callback(CSVLoggerCallback(self.args.output_dir))
        if getattr(self.args, "profile_steps", 0) > 0:
            self.add_callback(TorchProfilerCallback(self.args.output_dir, active=self.args.profile_steps))

    # ----- extra state ------------------------------------------------------------------------------------------
    def register_state(self, name: str, obj: Any) -> None:
        """Save `obj.state_dict()` in every checkpoint as `<name>.safetensors` (+ `<name>.json` for nested state)
        and restore it on resume."""
        if not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"State name {name!r} must be letters, digits, '_' or '-'.")
        if name in self._states and self._states[name] is not obj:
            raise ValueError(f"A state named {name!r} is already registered.")
        self._states[name] = obj

    def add_ema(self, ema: EMACallback) -> EMACallback:
        """Add an `EMACallback` and checkpoint it under its name (several EMAs may run at once)."""
        self.callback_handler.callbacks.append(ema)  # add_callback would warn about a second EMACallback
        self.register_state(ema.name, ema)
        return ema

    @staticmethod
    def _is_tensor_dict(state: Any) -> bool:
        return isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())

    def _save_states(self, output_dir: str) -> None:
        for name, obj in self._states.items():
            state = obj.state_dict()  # on every process: gathering FSDP-sharded state is a collective
            if not self.args.should_save:
                continue
            if self._is_tensor_dict(state):
                tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
                safetensors.torch.save_file(tensors, os.path.join(output_dir, f"{name}.safetensors"))
            else:
                save_state_files(state, output_dir, name)

    def _load_states(self, checkpoint: str) -> None:
        for name, obj in self._states.items():
            tensors, pickle = (os.path.join(checkpoint, f"{name}.{ext}") for ext in ("safetensors", "pt"))
            if os.path.isfile(os.path.join(checkpoint, f"{name}.json")):
                obj.load_state_dict(load_state_files(checkpoint, name))
            elif os.path.isfile(tensors):
                obj.load_state_dict(safetensors.torch.load_file(tensors))
            elif os.path.isfile(pickle):
                obj.load_state_dict(load_torch_state(pickle))
            else:
                raise FileNotFoundError(f"{tensors} is missing: the checkpoint cannot restore {name!r}.")

    # ----- metrics ----------------------------------------------------------------------------------------------
    def record_metrics(self, **values: torch.Tensor | float) -> None:
        """Add one observation per metric (tensors stay on the device until the next log)."""
        for name, value in values.items():
            value = value.detach().float() if isinstance(value, torch.Tensor) else torch.tensor(float(value))
            if name in self._metric_sums:
                self._metric_sums[name] += value.to(self._metric_sums[name].device)
            else:
                self._metric_sums[name] = value.clone()
            self._metric_counts[name] = self._metric_counts.get(name, 0) + 1
            bad = (~torch.isfinite(value)).to(self.args.device)  # every term feeds the non-finite flag (no sync)
            self._bad_terms = bad if self._bad_terms is None else self._bad_terms | bad

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
                raise NonFiniteLossError(self._nonfinite_message(f"Non-finite loss terms {bad}"))
        super().log(logs, start_time)

    def floating_point_ops(self, inputs) -> int:
        """FLOP counting is off: Trainer's estimate is meant for text models and walks every parameter each step."""
        return 0

    # ----- non-finite detection ---------------------------------------------------------------------------------
    def _maybe_log_save_evaluate(self, tr_loss, grad_norm, model, trial, epoch, *args, **kwargs) -> None:
        """Once per optimizer step: fold the loss's finiteness into a device flag (no host sync)."""
        step = torch.full((), self.state.global_step, dtype=torch.long, device=tr_loss.device)  # no host copy
        if self._nonfinite_step is None or self._nonfinite_step.device != tr_loss.device:
            self._nonfinite_step = torch.full((), -1, dtype=torch.long, device=tr_loss.device)
        bad = ~torch.isfinite(tr_loss.detach()).all()
        if self._bad_terms is not None:
            bad = bad | self._bad_terms.to(tr_loss.device)
        first = (self._nonfinite_step < 0) & bad
        self._nonfinite_step = torch.where(first, step, self._nonfinite_step)
        super()._maybe_log_save_evaluate(tr_loss, grad_norm, model, trial, epoch, *args, **kwargs)

    def first_nonfinite_step(self) -> int | None:
        """The first optimizer step whose loss was not finite on any process (a host sync), or None."""
        if self._nonfinite_step is None:
            return None
        flag = self._nonfinite_step.clone()
        flag = torch.where(flag < 0, torch.full_like(flag, 2**62), flag)
        step = (
            -int(self.accelerator.reduce(-flag, reduction="max").item())  # accelerate has no "min" (it would sum)
            if self.accelerator.num_processes > 1
            else int(flag.item())
        )
        return None if step == 2**62 else step

    def _nonfinite_message(self, what: str, step: int | None = None) -> str:
        step = self.first_nonfinite_step() if step is None else step
        last = last_complete_checkpoint(self.args.output_dir)
        where = f"first at step {step}" if step is not None else f"at step {self.state.global_step}"
        advice = (
            f"The last finite checkpoint is {last}: resume from it with --resume_from_checkpoint {last}"
            if last
            else "No finite checkpoint was saved: restart"
        )
        return (
            f"{what} ({where}). Nothing from that step on was saved. {advice} and a lower learning rate, bf16 "
            "instead of fp16, or gradient clipping (--max_grad_norm)."
        )

    def check_finite(self) -> None:
        """Raise `NonFiniteLossError` if a loss term, a weight, the optimizer state or a registered state is not
        finite (called before every save)."""
        step = self.first_nonfinite_step()
        if step is not None:
            raise NonFiniteLossError(self._nonfinite_message("Non-finite loss", step))
        if not all_finite(nested_tensors(self.accelerator.unwrap_model(self.model))):
            raise NonFiniteLossError(self._nonfinite_message("Non-finite weights"))
        bad = nonfinite_states(self._states)
        if self.optimizer is not None and not all_finite(nested_tensors(self.optimizer.state_dict()["state"])):
            bad.append("optimizer")
        if bad:
            raise NonFiniteLossError(self._nonfinite_message(f"Non-finite state in {bad}"))

    # ----- checkpoints ------------------------------------------------------------------------------------------
    def _get_output_dir(self, trial) -> str:
        run_dir = super()._get_output_dir(trial)
        return os.path.join(run_dir, STAGING_DIR) if self._staging else run_dir

    def _save_checkpoint(self, model, trial) -> None:
        """Write `checkpoint-N` in a staging folder, then rename it into place with a completeness marker."""
        self.check_finite()
        run_dir = super()._get_output_dir(trial)
        name = f"checkpoint-{self.state.global_step}"
        staged, final = os.path.join(run_dir, STAGING_DIR, name), os.path.join(run_dir, name)
        if self.args.should_save and os.path.isdir(staged):
            shutil.rmtree(staged)
        self._staging = True
        try:
            super()._save_checkpoint(model, trial)
        except (OSError, RuntimeError) as error:
            explained = explain_save_failure(error, staged)
            if explained is not None:
                raise explained from error
            raise
        finally:
            self._staging = False
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            if os.path.isdir(final):
                shutil.rmtree(final)
            write_run_record(staged, self._run_record)
            os.replace(staged, final)
            write_complete_marker(final, self.state.global_step)
            if self.state.best_model_checkpoint:
                self.state.best_model_checkpoint = self.state.best_model_checkpoint.replace(staged, final)
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=False,
            )
        self.accelerator.wait_for_everyone()

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Weights through the model's own `from_pretrained`, which maps the names `save_pretrained` wrote back to
        the module's (transformers 5 saves e.g. DINOv2's attention under legacy names, which Trainer's raw
        `load_state_dict` would silently miss). Keys absent from the checkpoint (RAE's frozen encoder) are left as
        they are."""
        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        weights = os.path.join(resume_from_checkpoint, "model.safetensors")
        if self.is_fsdp_enabled or not isinstance(target, PreTrainedModel) or not os.path.isfile(weights):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        loaded, info = type(target).from_pretrained(resume_from_checkpoint, output_loading_info=True)
        missing = set(info["missing_keys"])
        state = {k: v for k, v in loaded.state_dict().items() if k not in missing}
        self._issue_warnings_after_load(target.load_state_dict(state, strict=False))

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        self._save_states(output_dir)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        fresh = optimizer_hyperparameters(self.optimizer) if checkpoint and self._config_changes else None
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            self._load_states(checkpoint)
        if fresh is not None:  # --allow_config_change: the new hyperparameters and schedule from the current step
            apply_new_hyperparameters(self.optimizer, self.lr_scheduler, fresh)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Trainer's save; a final (non-checkpoint) folder gets the arguments as `training_args.json` instead of
        Trainer's pickled `training_args.bin`, so a published folder holds no pickle."""
        super()._save(output_dir, state_dict=state_dict)
        save_arguments_as_json(output_dir or self.args.output_dir, self.args)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the model; a final (non-checkpoint) save refuses non-finite losses or weights."""
        if not _internal_call:
            self.check_finite()
        super().save_model(output_dir, _internal_call)

    # ----- exact resume -----------------------------------------------------------------------------------------
    def set_initial_training_values(self, args, dataloader):
        """Trainer's step counts, named once (`TrainingValues`), then `on_training_values` (override that)."""
        values = super().set_initial_training_values(args, dataloader)
        self.training_values = training_values(values)
        self.on_training_values(self.training_values, sized=has_length(dataloader))
        return values

    def on_training_values(self, values: TrainingValues, sized: bool) -> None:
        """Called once per `train()` before the optimizer and schedules are built, with Trainer's step counts;
        `sized`: the training data has a length (else epochs are undefined and `num_update_steps_per_epoch` is
        `max_steps`)."""

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """Skip batches whose images were ALL undecodable (`ImageCollator` returns them empty while the bad-image
        limit holds), counting their images as skipped. Several processes cannot skip one without falling out of step
        in DDP's gradient all-reduce, so there it is an error naming the cause."""
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        empty = [batch for batch in batches if is_empty_batch(batch)]
        if not empty:
            return batches, num_items
        if self.accelerator.num_processes > 1:
            raise BadImageError(
                "A batch held only undecodable images (see the warnings above); with several processes it cannot be "
                "skipped: remove those files or use a larger batch."
            )
        for batch in empty:
            self.record_images(0, skipped=batch.get("num_skipped"))
        return [batch for batch in batches if not is_empty_batch(batch)], num_items

    def _check_resume_files(self, checkpoint: str) -> None:
        missing = missing_resume_files(checkpoint, list(self._states), self.accelerator.num_processes)
        if not missing:
            return
        message = (
            f"Checkpoint {checkpoint} lacks {missing}: resuming would restart the optimizer, the schedule or the "
            "random state (or use a partly written folder), so the run would not continue exactly."
        )
        if not getattr(self.args, "allow_partial_resume", False):
            raise FileNotFoundError(message + " Pass --allow_partial_resume true to resume anyway.")
        logger.warning("%s Resuming anyway (--allow_partial_resume).", message)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        checkpoint = prepare_output_dir(  # the scripts' own call, repeated for direct API users (idempotent)
            self.args.output_dir,
            resume_from_checkpoint,
            getattr(self.args, "overwrite_output_dir", False),
            allow_partial_resume=getattr(self.args, "allow_partial_resume", False),
        )
        self._run_record = run_record(self.args, self.accelerator.unwrap_model(self.model))
        if checkpoint is not None:
            self._check_resume_files(checkpoint)
            allow = getattr(self.args, "allow_config_change", False)
            self._config_changes = check_resume_config(checkpoint, self._run_record, allow)
        result = super().train(resume_from_checkpoint=checkpoint, **kwargs)
        if self._signal.received is not None:
            raise TrainingInterrupted(
                f"Stopped by signal {self._signal.received} at step {self.state.global_step}; the checkpoint "
                f"{last_complete_checkpoint(self.args.output_dir)} holds it: resume with --resume_from_checkpoint last."
            )
        self.check_finite()
        return result

    # ----- model card -------------------------------------------------------------------------------------------
    def model_card_text(self, dataset: str, metrics: dict) -> str | None:
        """The model card of this trainer's model (override); None: Trainer's default card."""
        return None

    def create_model_card(self, dataset: str | None = None, **kwargs) -> None:
        """Write the method's model card (with the last logged metrics and `license=` when given) to
        `output_dir/README.md`."""
        if not self.is_world_process_zero():
            return
        metrics: dict = {}
        for entry in self.state.log_history:
            metrics.update({k: v for k, v in entry.items() if k not in ("epoch", "step", "total_flos")})
        card = self.model_card_text(dataset or "unknown", metrics)
        if card is None:
            super().create_model_card(dataset_name=dataset, **kwargs)
        else:
            write_model_card(self.args.output_dir, card, license=kwargs.get("license"))


def save_arguments_as_json(folder: str, args: TrainingArguments) -> None:
    """In a folder that is not a `checkpoint-N`: `training_args.json` in place of the pickled `training_args.bin`."""
    if os.path.basename(os.path.normpath(folder)).startswith(PREFIX_CHECKPOINT_DIR):
        return
    pickled = os.path.join(folder, TRAINING_ARGS_NAME)
    if os.path.isfile(pickled):
        os.remove(pickled)
    with open(os.path.join(folder, "training_args.json"), "w") as f:
        f.write(args.to_json_string())


def load_torch_state(path: str) -> dict:
    """Load a state dict saved with `torch.save`, refusing anything but tensors and plain containers."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing from the checkpoint.")
    return torch.load(path, map_location="cpu", weights_only=True)
