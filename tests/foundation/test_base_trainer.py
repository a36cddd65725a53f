"""BaseTrainer: registered extra state, several EMAs, non-finite losses caught at the step, atomic checkpoints,
partial-resume refusal, no silent overwrite, exact mid-epoch resume with random augmentations, save on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn
from torch.utils.data import Dataset
from transformers import Dinov2Config, Dinov2Model, PreTrainedModel

from rae_hf.callbacks import EMACallback
from rae_hf.trainers.base_config import BaseTrainingArguments
from rae_hf.trainers.base_trainer import BaseTrainer, NonFiniteLossError, StateHandle
from rae_hf.trainers.checkpoints import COMPLETE_MARKER, last_complete_checkpoint

ROOT = Path(__file__).resolve().parents[2]


class NoisyRegression(nn.Module):
    """`loss = mse(linear(x), y)`; `poison_at` makes the loss NaN from that forward call on."""

    def __init__(self, poison_at: int | None = None):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(4, 1)
        self.poison_at = poison_at
        self.calls = 0

    def forward(self, x, y):
        self.calls += 1
        loss = nn.functional.mse_loss(self.linear(x + 0.01 * torch.randn_like(x)).squeeze(-1), y)
        if self.poison_at is not None and self.calls >= self.poison_at:
            loss = loss * float("nan")
        return {"loss": loss}


class AugmentedPoints(Dataset):
    """Points whose 'augmentation' draws from torch's global RNG, like torchvision transforms do."""

    def __init__(self, count: int = 12):
        generator = torch.Generator().manual_seed(1)
        self.x = torch.randn(count, 4, generator=generator)
        self.y = self.x.sum(-1)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index):
        return {"x": self.x[index] + torch.rand(4), "y": self.y[index]}


def make_args(output_dir, **overrides) -> BaseTrainingArguments:
    values = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=2,
        max_steps=8,
        learning_rate=0.05,
        logging_steps=5,
        save_strategy="steps",
        save_steps=3,
        report_to="none",
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    values.update(overrides)
    return BaseTrainingArguments(**values)


class Counter:
    """A registered state that is not a tensor dict (saved as .safetensors + .json, no pickle)."""

    def __init__(self):
        self.value = 0

    def state_dict(self):
        return {"value": self.value, "name": "counter"}

    def load_state_dict(self, state):
        self.value = state["value"]


def make_trainer(args, model=None, emas: bool = True) -> BaseTrainer:
    trainer = BaseTrainer(model=model or NoisyRegression(), args=args, train_dataset=AugmentedPoints())
    if emas:
        trainer.add_ema(EMACallback(0.9, name="ema_fast", apply_at_train_end=False))
        trainer.add_ema(EMACallback(lambda step: 0.5 + 0.04 * step, name="ema_scheduled", apply_at_train_end=False))
    return trainer


def final_weights(trainer: BaseTrainer) -> dict[str, torch.Tensor]:
    state = {f"model.{k}": v.clone() for k, v in trainer.model.state_dict().items()}
    for name, obj in trainer._states.items():
        state.update({f"{name}.{k}": v for k, v in obj.state_dict().items()})
    return state


def test_two_emas_and_a_nested_state_are_saved_under_their_names_and_restored(tmp_path):
    trainer = make_trainer(make_args(tmp_path / "run", max_steps=3))
    counter = Counter()
    trainer.register_state("counter", counter)
    counter.value = 7
    trainer.train()
    checkpoint = tmp_path / "run" / "checkpoint-3"
    files = set(os.listdir(checkpoint))
    expected = {"ema_fast.safetensors", "ema_scheduled.safetensors", "counter.safetensors", "counter.json"}
    assert expected | {COMPLETE_MARKER} <= files
    fast = safetensors.torch.load_file(checkpoint / "ema_fast.safetensors")
    scheduled = safetensors.torch.load_file(checkpoint / "ema_scheduled.safetensors")
    assert not torch.equal(fast["linear.weight"], scheduled["linear.weight"])  # two EMAs, two decays

    restored = make_trainer(make_args(tmp_path / "other", max_steps=3))
    other_counter = Counter()
    restored.register_state("counter", other_counter)
    restored._load_states(str(checkpoint))
    assert other_counter.value == 7
    assert torch.equal(restored._states["ema_fast"].shadow["linear.weight"], fast["linear.weight"])
    with pytest.raises(ValueError, match="already registered"):
        restored.register_state("counter", Counter())


def test_scheduled_ema_decay_follows_the_schedule():
    model = nn.Linear(2, 1)
    ema = EMACallback(lambda step: 0.1 * step, name="s")
    ema.on_train_begin(None, None, None, model=model)
    before = ema.shadow["weight"].clone()
    with torch.no_grad():
        model.weight.add_(1.0)

    class State:
        global_step = 5

    ema.on_step_end(None, State(), None, model=model)
    torch.testing.assert_close(ema.shadow["weight"], 0.5 * before + 0.5 * model.weight.detach())


def test_ema_with_a_target_updates_the_target_module_in_place():
    student, teacher = nn.Linear(3, 3), nn.Linear(3, 3)
    teacher.requires_grad_(False)
    expected = {n: 0.8 * p.detach().clone() for n, p in teacher.named_parameters()}
    ema = EMACallback(0.8, name="teacher", target=teacher, source=student)
    ema.on_train_begin(None, None, None, model=None)
    for name, p in student.named_parameters():
        expected[name] += 0.2 * p.detach()
    ema.on_step_end(None, None, None)
    for name, p in teacher.named_parameters():
        torch.testing.assert_close(p, expected[name])
    copy = nn.Linear(3, 3)
    restored = EMACallback(0.8, name="teacher", target=copy, source=student)
    restored.load_state_dict(ema.state_dict())
    assert torch.equal(copy.weight, teacher.weight)


def test_mid_epoch_resume_with_random_augmentations_is_exact(tmp_path):
    """12 examples, batch 2: checkpoint-3 is in the middle of the first epoch."""
    full = make_trainer(make_args(tmp_path / "full"))
    full.train()
    resumed = make_trainer(make_args(tmp_path / "resumed"))
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-3"))
    expected, actual = final_weights(full), final_weights(resumed)
    assert expected.keys() == actual.keys()
    assert [k for k in expected if not torch.equal(expected[k], actual[k])] == []


def test_nan_between_logs_is_caught_at_its_step_and_never_saved(tmp_path):
    """Loss NaN from step 4 on; logs every 5 steps, saves every 3: checkpoint-6 must not be written."""
    trainer = make_trainer(make_args(tmp_path, logging_steps=5), model=NoisyRegression(poison_at=4), emas=False)
    with pytest.raises(NonFiniteLossError) as error:
        trainer.train()
    message = str(error.value)
    assert "first at step 4" in message
    assert str(tmp_path / "checkpoint-3") in message
    assert last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-3")
    assert not (tmp_path / "checkpoint-6").exists()


def test_nan_in_a_run_shorter_than_one_log_is_not_published(tmp_path):
    trainer = make_trainer(
        make_args(tmp_path, max_steps=2, logging_steps=50, save_strategy="no"),
        model=NoisyRegression(poison_at=2),
        emas=False,
    )
    with pytest.raises(NonFiniteLossError, match="first at step 2"):
        trainer.train()
    with pytest.raises(NonFiniteLossError):
        trainer.save_model()
    assert not (tmp_path / "model.safetensors").exists()


def test_failed_save_leaves_no_complete_checkpoint_and_names_the_full_disk(tmp_path, monkeypatch):
    trainer = make_trainer(make_args(tmp_path, max_steps=6), emas=False)
    original = BaseTrainer._save_optimizer_and_scheduler

    def fail_at_six(self, output_dir):
        if output_dir.endswith("checkpoint-6"):
            raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 128 vs 64")
        original(self, output_dir)

    monkeypatch.setattr(BaseTrainer, "_save_optimizer_and_scheduler", fail_at_six)
    with pytest.raises(OSError, match=r"disk .* is full"):
        trainer.train()
    assert not (tmp_path / "checkpoint-6").exists()  # only the staging folder holds the partial write
    assert last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-3")


@pytest.mark.parametrize("missing", ["scheduler.pt", "optimizer.pt", "rng_state.pth", "ema_fast.safetensors"])
def test_partial_checkpoint_is_refused_unless_allowed(tmp_path, missing):
    make_trainer(make_args(tmp_path / "full", max_steps=3)).train()
    checkpoint = tmp_path / "full" / "checkpoint-3"
    (checkpoint / missing).unlink()
    with pytest.raises(FileNotFoundError, match=missing):
        make_trainer(make_args(tmp_path / "a", max_steps=4)).train(resume_from_checkpoint=str(checkpoint))
    if missing != "ema_fast.safetensors":
        trainer = make_trainer(make_args(tmp_path / "b", max_steps=4, allow_partial_resume=True))
        trainer.train(resume_from_checkpoint=str(checkpoint))
        assert trainer.state.global_step == 4


def test_checkpoint_without_marker_is_not_last(tmp_path):
    make_trainer(make_args(tmp_path, max_steps=6)).train()
    (tmp_path / "checkpoint-6" / COMPLETE_MARKER).unlink()
    assert last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-3")


def test_a_finished_run_is_not_overwritten(tmp_path):
    trainer = make_trainer(make_args(tmp_path, max_steps=3))
    trainer.train()
    trainer.save_model()
    before = (tmp_path / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="overwrite_output_dir"):
        make_trainer(make_args(tmp_path, max_steps=2)).train()
    assert (tmp_path / "model.safetensors").read_bytes() == before
    make_trainer(make_args(tmp_path, max_steps=2, overwrite_output_dir=True)).train()
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2"]  # the old run's are gone
    assert not (tmp_path / "model.safetensors").exists()


@pytest.mark.parametrize(
    ("overrides", "argument"),
    [
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"min_lr": 1.0}, "min_lr"),
        ({"num_train_epochs": 0, "max_steps": -1}, "num_train_epochs"),
        ({"fid_num_samples": 1}, "fid_num_samples"),
        ({"ema_decay": 1.0}, "ema_decay"),
    ],
)
def test_bad_values_are_refused_naming_the_argument(tmp_path, overrides, argument):
    with pytest.raises(ValueError, match=argument):
        make_args(tmp_path, **overrides)


def test_state_handle_adapts_functions():
    box = {"v": torch.ones(2)}
    handle = StateHandle(lambda: dict(box), box.update)
    handle.load_state_dict({"v": torch.zeros(2)})
    assert torch.equal(handle.state_dict()["v"], torch.zeros(2))


SIGTERM_SCRIPT = textwrap.dedent(
    """
    import os, signal
    from foundation.test_base_trainer import make_args, make_trainer
    from transformers import TrainerCallback

    class SlowSteps(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                os.kill(os.getpid(), signal.SIGTERM)

    trainer = make_trainer(make_args({out!r}, max_steps=50, save_steps=100))
    trainer.add_callback(SlowSteps())
    trainer.train()
    """
)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_stops(tmp_path):
    script = SIGTERM_SCRIPT.format(out=str(tmp_path / "run"))
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT / "tests", capture_output=True, text=True, timeout=300
    )
    assert result.returncode != 0
    assert "Stopped by signal" in result.stderr, result.stderr[-2000:]
    checkpoint = last_complete_checkpoint(str(tmp_path / "run"))  # the signal arrives during step 2 or 3
    assert checkpoint is not None and checkpoint.endswith(("checkpoint-2", "checkpoint-3")), checkpoint
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    assert checkpoint.endswith(f"checkpoint-{state['global_step']}")
    assert result.returncode != -signal.SIGTERM  # the trainer's handler ran: the signal did not kill the process


class TinyDinoRegressor(PreTrainedModel):
    """A trainable DINOv2 inside a PreTrainedModel: transformers 5 saves its attention under legacy key names."""

    config_class = Dinov2Config

    def __init__(self, config):
        super().__init__(config)
        self.backbone = Dinov2Model(config)
        self.head = nn.Linear(config.hidden_size, 1)
        self.post_init()

    def forward(self, x, y):
        features = self.backbone(pixel_values=x).pooler_output
        return {"loss": nn.functional.mse_loss(self.head(features).squeeze(-1), y)}


class TinyImages(Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, index):
        generator = torch.Generator().manual_seed(index)
        return {"x": torch.rand(3, 16, 16, generator=generator), "y": torch.tensor(float(index % 2))}


def test_resume_restores_weights_saved_under_legacy_names(tmp_path):
    """Before: Trainer's raw load missed DINOv2's renamed attention weights, so a resume went on from the fresh
    init of those layers (fine-tuning an encoder, probe `--mode full`, DINO pretraining)."""
    config = Dinov2Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=16, patch_size=8
    )

    def trainer(out):
        torch.manual_seed(0)
        return BaseTrainer(
            model=TinyDinoRegressor(config), args=make_args(out, max_steps=4, save_steps=2), train_dataset=TinyImages()
        )

    full = trainer(tmp_path / "full")
    full.train()
    resumed = trainer(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2"))
    expected, actual = full.model.state_dict(), resumed.model.state_dict()
    assert [k for k in expected if not torch.equal(expected[k], actual[k])] == []
