"""Resume with a changed run configuration: refused with an old -> new table unless --allow_config_change (then the
new lr applies from the current step); freely changeable fields are accepted; old checkpoints resume with a warning."""

from __future__ import annotations

import json
import logging

import pytest
from test_base_trainer import make_args, make_trainer

from rae_hf.trainers.run_config_check import RUN_CONFIG_NAME


def _first_run(tmp_path):
    make_trainer(make_args(tmp_path / "run", max_steps=4, save_steps=2), emas=False).train()
    return str(tmp_path / "run" / "checkpoint-2")


def test_checkpoint_records_the_run_configuration(tmp_path):
    checkpoint = _first_run(tmp_path)
    with open(f"{checkpoint}/{RUN_CONFIG_NAME}") as f:
        record = json.load(f)
    assert record["BaseTrainingArguments"]["learning_rate"] == 0.05


def test_changed_lr_is_refused_with_a_table(tmp_path):
    checkpoint = _first_run(tmp_path)
    trainer = make_trainer(make_args(tmp_path / "run", max_steps=4, save_steps=2, learning_rate=0.01), emas=False)
    with pytest.raises(ValueError) as error:
        trainer.train(resume_from_checkpoint=checkpoint)
    assert "learning_rate: 0.05 -> 0.01" in str(error.value)
    assert "--allow_config_change" in str(error.value)
    assert "lr_scheduler_kwargs" not in str(error.value)  # only what changed


def test_allowed_change_uses_the_new_lr_from_the_current_step(tmp_path):
    checkpoint = _first_run(tmp_path)
    args = make_args(
        tmp_path / "run", max_steps=4, save_steps=2, learning_rate=0.01, allow_config_change=True,
        lr_scheduler_type="constant",
    )
    trainer = make_trainer(args, emas=False)
    seen = []
    trainer.add_callback(type("Lr", (__import__("transformers").TrainerCallback,), {
        "on_step_begin": lambda self, a, s, c, optimizer=None, **k: seen.append((s.global_step, optimizer.param_groups[0]["lr"]))
    })())
    trainer.train(resume_from_checkpoint=checkpoint)
    assert seen == [(2, 0.01), (3, 0.01)]
    assert trainer.state.global_step == 4


def test_free_fields_are_accepted_and_extend_the_run(tmp_path):
    checkpoint = _first_run(tmp_path)
    trainer = make_trainer(make_args(tmp_path / "run", max_steps=6, save_steps=3, logging_steps=1), emas=False)
    trainer.train(resume_from_checkpoint=checkpoint)
    assert trainer.state.global_step == 6


def test_old_checkpoint_without_record_resumes_with_a_warning(tmp_path, caplog):
    checkpoint = _first_run(tmp_path)
    (tmp_path / "run" / "checkpoint-2" / RUN_CONFIG_NAME).unlink()
    trainer = make_trainer(make_args(tmp_path / "run", max_steps=4, save_steps=2, learning_rate=0.01), emas=False)
    with caplog.at_level(logging.WARNING):
        trainer.train(resume_from_checkpoint=checkpoint)
    assert "records no run configuration" in caplog.text
