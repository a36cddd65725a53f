"""The non-public `transformers.Trainer` API rae_hf relies on: every hook we override or call is listed once and
exists (with the parameters we use) on the installed Trainer; a missing one is an ImportError naming it, the installed
version and the supported range; `set_initial_training_values` is read by name; the seeded augmentations' epoch
advances every epoch and after a resume (through a public callback, not `_run_epoch`)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest
import torch
import transformers
from accelerate.data_loader import DataLoaderShard
from packaging.version import Version
from torch.utils.data import Dataset
from transformers import Trainer

import rae_hf.trainers
from rae_hf.trainers.base_trainer import BaseTrainer
from rae_hf.trainers.trainer_contract import (
    PRIVATE_TRAINER_HOOKS,
    SUPPORTED_TRANSFORMERS,
    TRANSFORMERS_MAX_VERSION,
    TRANSFORMERS_MIN_VERSION,
    TrainingValues,
    check_trainer_contract,
    contract_problems,
    training_values,
)

ROOT = Path(__file__).resolve().parents[2]
TRAINER_MODULES = [
    importlib.import_module(info.name)
    for info in pkgutil.iter_modules(rae_hf.trainers.__path__, "rae_hf.trainers.")
    if info.name.endswith("_trainer")
]


def _trainer_classes() -> list[type]:
    classes = {
        obj
        for module in TRAINER_MODULES
        for obj in vars(module).values()
        if inspect.isclass(obj) and issubclass(obj, Trainer) and obj.__module__.startswith("rae_hf.")
    }
    return sorted(classes, key=lambda cls: cls.__qualname__)


def test_installed_trainer_has_every_hook_we_rely_on():
    assert contract_problems() == []
    check_trainer_contract()  # no error


def test_every_private_trainer_name_we_override_or_call_is_listed():
    classes = _trainer_classes()
    assert {"BaseTrainer", "RAETrainer", "DinoTrainer", "JiTTrainer", "ProbeTrainer", "PruneTrainer"} <= {
        cls.__name__ for cls in classes
    }
    overridden = {
        (cls.__name__, name)
        for cls in classes
        for name in vars(cls)
        if name.startswith("_") and not name.startswith("__") and hasattr(Trainer, name)
    }
    assert overridden, "the walk found no override at all"
    unlisted = sorted(item for item in overridden if item[1] not in PRIVATE_TRAINER_HOOKS)
    assert not unlisted, f"overrides of private Trainer methods missing from PRIVATE_TRAINER_HOOKS: {unlisted}"
    called = set()
    for module in TRAINER_MODULES:
        for name in re.findall(r"(?:self|super\(\))\.(_[a-z]\w*)\(", inspect.getsource(module)):
            if callable(getattr(Trainer, name, None)):
                called.add(name)
    assert not called - set(PRIVATE_TRAINER_HOOKS), sorted(called - set(PRIVATE_TRAINER_HOOKS))


def test_run_epoch_is_no_longer_overridden():
    assert all("_run_epoch" not in vars(cls) for cls in _trainer_classes())


def _trainer_without(name: str) -> type:
    """A stand-in for an older Trainer: the real hooks, less `name`."""
    return type("OldTrainer", (), {hook: getattr(Trainer, hook) for hook in PRIVATE_TRAINER_HOOKS if hook != name})


@pytest.mark.parametrize("hook", ["_clip_grad_norm", "_maybe_log_save_evaluate", "set_initial_training_values"])
def test_a_missing_hook_is_an_import_error_naming_it_the_version_and_the_range(hook):
    with pytest.raises(ImportError) as error:
        check_trainer_contract(_trainer_without(hook))
    message = str(error.value)
    assert f"Trainer.{hook} is missing" in message
    assert transformers.__version__ in message and SUPPORTED_TRANSFORMERS in message


def test_a_renamed_parameter_or_return_value_is_reported():
    def _maybe_log_save_evaluate(self, loss, grad_norm, model, trial, epoch, ignore_keys_for_eval, start_time):
        pass

    def set_initial_training_values(self, args, dataloader):
        num_train_epochs = max_steps = 1
        return (num_train_epochs, max_steps)

    hooks = {hook: getattr(Trainer, hook) for hook in PRIVATE_TRAINER_HOOKS}
    hooks.update(
        _maybe_log_save_evaluate=_maybe_log_save_evaluate, set_initial_training_values=set_initial_training_values
    )
    problems = contract_problems(type("ChangedTrainer", (), hooks))
    assert problems == [
        "Trainer._maybe_log_save_evaluate has no parameter(s) ['tr_loss']",
        f"Trainer.set_initial_training_values returns ('num_train_epochs', 'max_steps'), not {TrainingValues._fields}",
    ]


def test_training_values_are_read_by_name():
    values = training_values((3, 6, 12, 36, 2, 6, 18))
    assert (values.num_update_steps_per_epoch, values.total_train_batch_size, values.max_steps) == (6, 2, 18)
    with pytest.raises(TypeError, match="returned 6 values"):
        training_values((3, 6, 12, 36, 2, 6))


def test_setup_pins_the_supported_range_and_the_installed_version_is_in_it():
    assert f'"transformers{SUPPORTED_TRANSFORMERS}"' in (ROOT / "setup.py").read_text()
    assert Version(TRANSFORMERS_MIN_VERSION) <= Version(transformers.__version__) < Version(TRANSFORMERS_MAX_VERSION)


class EpochRecorder(Dataset):
    """12 points; records the epoch of the seeded wrapper each time an item is drawn (through `torch.rand`)."""

    def __init__(self):
        self.draws: list[float] = []

    def __len__(self) -> int:
        return 12

    def __getitem__(self, index):
        self.draws.append(torch.rand(()).item())
        return {"x": torch.full((4,), float(index)), "y": torch.tensor(float(index))}


class Regression(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)

    def forward(self, x, y):
        return {"loss": torch.nn.functional.mse_loss(self.linear(x).squeeze(-1), y)}


class RecordingTrainer(BaseTrainer):
    def on_training_values(self, values: TrainingValues, sized: bool) -> None:
        self.seen = (values, sized)


def _train(output_dir, resume: str | None = None) -> tuple[RecordingTrainer, list[int]]:
    from foundation.test_base_trainer import make_args

    args = make_args(output_dir, max_steps=14, save_steps=7)
    trainer = RecordingTrainer(model=Regression(), args=args, train_dataset=EpochRecorder())
    epochs: list[int] = []
    dataset = trainer.train_dataset
    set_epoch = dataset.set_epoch
    dataset.set_epoch = lambda epoch: (epochs.append(epoch), set_epoch(epoch))
    trainer.train(resume_from_checkpoint=resume)
    return trainer, epochs


def _sampler_only_set_epoch(self, epoch: int) -> None:
    """accelerate's `DataLoaderShard.set_epoch` as it behaves with several processes: the sampler hears of the
    epoch, the dataset does not."""
    self.iteration = epoch
    batch_sampler = getattr(self.batch_sampler, "batch_sampler", self.batch_sampler)  # resumed: SkipBatchSampler
    batch_sampler.sampler.set_epoch(epoch)


def test_seeded_epoch_advances_every_epoch_and_after_a_resume(tmp_path, monkeypatch):
    """12 points, batch 2: 6 optimizer steps per epoch; 14 steps span epochs 0, 1 and 2. Only our callback tells
    the dataset (as with several processes), once per epoch."""
    monkeypatch.setattr(DataLoaderShard, "set_epoch", _sampler_only_set_epoch)
    trainer, epochs = _train(tmp_path / "full")
    assert epochs == [0, 1, 2]
    values, sized = trainer.seen
    assert sized and (values.num_update_steps_per_epoch, values.max_steps, values.total_train_batch_size) == (6, 14, 2)
    draws = trainer.train_dataset.dataset.draws
    assert sorted(draws[:12]) != sorted(draws[12:24])  # another epoch: other augmentations of the same items

    resumed, epochs = _train(tmp_path / "resumed", resume=str(tmp_path / "full" / "checkpoint-7"))
    assert epochs == [1, 2]  # step 7 lies in epoch 1
    # the items drawn after the resume are the uninterrupted run's (same seed, epoch and index)
    assert resumed.train_dataset.dataset.draws[-8:] == draws[-8:]
