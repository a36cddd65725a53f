"""Every registered state and every recorded loss term is part of the non-finite guard: a NaN discriminator (RAE) or
EMA is never saved in a complete checkpoint, and the error names the last checkpoint, which really is finite."""

from __future__ import annotations

import os

import pytest
import safetensors.torch
import torch
from test_base_trainer import make_args, make_trainer
from transformers import TrainerCallback

from rae_hf.trainers.base_trainer import NonFiniteLossError
from rae_hf.trainers.checkpoints import last_complete_checkpoint


class Poison(TrainerCallback):
    """At the end of optimizer step `step`, fill the first tensor of `tensors()` with NaN."""

    def __init__(self, step: int, tensors):
        self.step, self.tensors = step, tensors

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            with torch.no_grad():
                next(iter(self.tensors())).fill_(float("nan"))


def _checkpoints_finite(folder) -> None:
    """Every tensor of every complete checkpoint in `folder` is finite (safetensors files and optimizer state)."""
    names = [n for n in os.listdir(folder) if n.startswith("checkpoint-")]
    assert names
    for name in names:
        for file in os.listdir(os.path.join(folder, name)):
            path = os.path.join(folder, name, file)
            if file.endswith(".safetensors"):
                tensors = safetensors.torch.load_file(path).values()
            elif file == "optimizer.pt":
                state = torch.load(path, weights_only=True)["state"]
                tensors = [t for group in state.values() for t in group.values()]
            else:
                continue
            for tensor in tensors:
                assert tensor.dim() == 0 or torch.isfinite(tensor).all(), (name, file)


def test_nan_ema_is_not_saved_and_the_last_checkpoint_is_finite(tmp_path):
    trainer = make_trainer(make_args(tmp_path, logging_steps=50))
    trainer.add_callback(Poison(4, lambda: trainer._states["ema_fast"].shadow.values()))
    with pytest.raises(NonFiniteLossError, match="ema_fast") as error:
        trainer.train()
    assert str(tmp_path / "checkpoint-3") in str(error.value)
    assert last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-3")
    assert not (tmp_path / "checkpoint-6").exists()
    _checkpoints_finite(tmp_path)


def test_nan_loss_term_feeds_the_flag_at_its_step(tmp_path):
    """The total loss stays finite; a recorded term turns NaN at step 4 and is caught there, before checkpoint-6."""
    trainer = make_trainer(make_args(tmp_path, logging_steps=50), emas=False)

    class Term(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            nan = float("nan") if state.global_step >= 3 else 1.0
            trainer.record_metrics(loss_term=torch.tensor(nan))

    trainer.add_callback(Term())
    with pytest.raises(NonFiniteLossError, match="first at step 4"):
        trainer.train()
    assert last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-3")


def test_rae_nan_discriminator_is_never_in_a_complete_checkpoint(tmp_path):
    """The issue's case: the discriminator blows up (NaN) while the generator loss is still finite (its GAN term
    starts later than the discriminator's updates)."""
    from conftest import SyntheticImages, tiny_discriminator, tiny_rae
    from conftest import make_args as rae_args

    from rae_hf.data import ImageCollator
    from rae_hf.trainers.rae_trainer import RAETrainer

    args = rae_args(
        tmp_path,
        max_steps=6,
        save_strategy="steps",
        save_steps=2,
        logging_steps=3,
        perceptual_weight=0.0,
        disc_start=100,
    )
    trainer = RAETrainer(
        model=tiny_rae(),
        args=args,
        discriminator=tiny_discriminator(),
        train_dataset=SyntheticImages(),
        data_collator=ImageCollator(),
    )
    trainer.add_callback(Poison(3, lambda: trainer.discriminator.trainable_state_dict().values()))
    with pytest.raises(NonFiniteLossError) as error:
        trainer.train()
    assert str(tmp_path / "checkpoint-2") in str(error.value)
    assert last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-2")
    assert not (tmp_path / "checkpoint-4").exists()
    _checkpoints_finite(tmp_path)
