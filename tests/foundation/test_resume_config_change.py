"""Resume with a changed run configuration: refused with an old -> new table unless --allow_config_change (then the
new lr applies from the current step); freely changeable fields are accepted; old checkpoints resume with a warning."""

from __future__ import annotations

import json
import logging

import pytest
from test_base_trainer import make_args, make_trainer
from transformers import TrainerCallback

from rae_hf.trainers.run_config_check import RUN_CONFIG_NAME


class LrSeen(TrainerCallback):
    """(step, lr of the first parameter group) at the start of every optimizer step."""

    def __init__(self):
        self.lrs: list[tuple[int, float]] = []

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        self.lrs.append((state.global_step, optimizer.param_groups[0]["lr"]))


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
        tmp_path / "run",
        max_steps=4,
        save_steps=2,
        learning_rate=0.01,
        allow_config_change=True,
        lr_scheduler_type="constant",
    )
    trainer = make_trainer(args, emas=False)
    seen = LrSeen()
    trainer.add_callback(seen)
    trainer.train(resume_from_checkpoint=checkpoint)
    assert seen.lrs == [(2, 0.01), (3, 0.01)]
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


# ----- per trainer family: RAE (decoder + discriminator), JiT (model config given by flags) -------------------------
def _rae_trainer(output_dir, **overrides):
    from conftest import SyntheticImages, tiny_discriminator, tiny_rae
    from conftest import make_args as rae_args

    from rae_hf.data import ImageCollator
    from rae_hf.trainers.rae_trainer import RAETrainer

    args = rae_args(output_dir, save_strategy="steps", save_steps=2, perceptual_weight=0.0, **overrides)
    return RAETrainer(
        model=tiny_rae(),
        args=args,
        discriminator=tiny_discriminator(),
        train_dataset=SyntheticImages(),
        data_collator=ImageCollator(),
    )


def _jit_trainer(output_dir, config_overrides=None, **overrides):
    import torch
    from conftest import SyntheticImages
    from jit.jit_helpers import tiny_config

    from rae_hf.models.jit import JiTModel
    from rae_hf.trainers.jit_config import JiTTrainingArguments
    from rae_hf.trainers.jit_trainer import JiTTrainer

    values = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=4,
        max_steps=4,
        learning_rate=2e-3,
        warmup_epochs=0,
        logging_steps=1,
        save_strategy="steps",
        save_steps=2,
        report_to="none",
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
        num_grid_samples=0,
    )
    torch.manual_seed(0)
    return JiTTrainer(
        model=JiTModel(tiny_config(num_classes=0, **(config_overrides or {}))),
        args=JiTTrainingArguments(**{**values, **overrides}),
        train_dataset=SyntheticImages(count=16, size=16),
    )


@pytest.mark.parametrize("family", ["rae", "jit"])
def test_trainer_family_refuses_a_changed_lr_and_allows_it_on_request(tmp_path, family):
    build = _rae_trainer if family == "rae" else _jit_trainer
    build(tmp_path, max_steps=4).train()
    checkpoint = str(tmp_path / "checkpoint-2")
    with pytest.raises(ValueError, match=r"learning_rate: 0\.00\d -> 0\.05"):
        build(tmp_path, max_steps=4, learning_rate=0.05).train(resume_from_checkpoint=checkpoint)
    build(tmp_path, max_steps=6, logging_steps=2).train(resume_from_checkpoint=checkpoint)  # free fields
    trainer = build(tmp_path, max_steps=4, learning_rate=0.05, allow_config_change=True)
    trainer.train(resume_from_checkpoint=checkpoint)
    assert trainer.lr_scheduler.base_lrs[0] == 0.05
    lrs = [entry["learning_rate"] for entry in trainer.state.log_history if "learning_rate" in entry]
    assert lrs and all(0 < lr <= 0.05 for lr in lrs) and max(lrs) > 0.01  # the new lr, from the current step


def test_jit_model_config_given_by_flags_is_compared(tmp_path):
    _jit_trainer(tmp_path).train()
    trainer = _jit_trainer(tmp_path, config_overrides={"num_attention_heads": 4})
    with pytest.raises(ValueError, match=r"num_attention_heads: 2 -> 4   \[model_config\]"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))


def _dino_trainer(output_dir, **overrides):
    from dino.dino_toys import ToyMultiCrop, dino_args, tiny_dino

    from rae_hf.data.multicrop import MultiCropCollator
    from rae_hf.trainers.dino_trainer import DinoTrainer

    args = dino_args(output_dir, save_strategy="steps", save_steps=2, **overrides)
    return DinoTrainer(model=tiny_dino(), args=args, train_dataset=ToyMultiCrop(), data_collator=MultiCropCollator(8))


def test_dino_refuses_a_changed_method_parameter_and_lr(tmp_path):
    _dino_trainer(tmp_path).train()
    checkpoint = str(tmp_path / "checkpoint-2")
    with pytest.raises(ValueError) as error:
        _dino_trainer(tmp_path, learning_rate=0.05, warmup_teacher_temperature_epochs=2).train(
            resume_from_checkpoint=checkpoint
        )
    assert "learning_rate:" in str(error.value) and "warmup_teacher_temperature_epochs: 1 -> 2" in str(error.value)
    _dino_trainer(tmp_path, max_steps=6, logging_steps=2).train(resume_from_checkpoint=checkpoint)  # free fields
