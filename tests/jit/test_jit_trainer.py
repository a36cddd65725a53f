"""JiTTrainer: overfitting, exact resume with both EMAs, the warm-up rule, the lr rule, EMA publishing."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch
from conftest import SyntheticImages, cpu_training_args
from jit_helpers import tiny_config

from rae_hf.data import ImageCollator
from rae_hf.models.jit import JiTModel
from rae_hf.trainers.jit_config import JiTTrainingArguments
from rae_hf.trainers.jit_trainer import JiTTrainer


class LabelledImages(SyntheticImages):
    def __getitem__(self, index: int) -> dict:
        return {"pixel_values": self.images[index], "label": index % 3}


def make_args(output_dir, **overrides) -> JiTTrainingArguments:
    values = dict(per_device_train_batch_size=4, max_steps=6, learning_rate=2e-3, warmup_epochs=0, ema_decay=0.9)
    values |= dict(ema_decay2=0.5, num_grid_samples=0)
    return cpu_training_args(JiTTrainingArguments, output_dir, **{**values, **overrides})


def make_trainer(output_dir, seed: int = 0, **overrides) -> JiTTrainer:
    torch.manual_seed(seed)
    model = JiTModel(tiny_config())
    return JiTTrainer(
        model=model,
        args=make_args(output_dir, **overrides),
        train_dataset=LabelledImages(count=16, size=16),
        data_collator=ImageCollator(),
    )


def test_loss_halves_when_overfitting_8_images(tmp_path):
    torch.manual_seed(0)
    trainer = JiTTrainer(
        model=JiTModel(tiny_config(num_classes=0, noise_scale=0.25)),  # 16 px: noise image_size / 256 ~ 0.06
        args=make_args(tmp_path, max_steps=100, per_device_train_batch_size=8, ema_decay=0.99),
        train_dataset=SyntheticImages(count=8, size=16),
    )
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    first, last = sum(losses[:5]) / 5, sum(losses[-10:]) / 10  # means over steps: t is random per step
    assert last < 0.5 * first, (first, last)


def test_exact_resume_with_both_emas(tmp_path):
    full = make_trainer(tmp_path / "full", save_strategy="steps", save_steps=3)
    full.train()
    checkpoint = tmp_path / "full" / "checkpoint-3"
    assert (checkpoint / "ema1.safetensors").is_file() and (checkpoint / "ema2.safetensors").is_file()
    ema1_mid = safetensors.torch.load_file(checkpoint / "ema1.safetensors")
    assert not torch.equal(ema1_mid["blocks.0.attn.qkv.weight"], full.ema1.shadow["blocks.0.attn.qkv.weight"])

    resumed = make_trainer(tmp_path / "full", seed=123, save_strategy="steps", save_steps=3, ema_apply_at_end=True)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    for name, value in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name
    for ema in ("ema1", "ema2"):
        a, b = getattr(full, ema).shadow, getattr(resumed, ema).shadow
        assert all(torch.equal(a[k], b[k]) for k in a), ema
    full_opt = full.optimizer.state_dict()["state"]
    resumed_opt = resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(full_opt[k]["exp_avg"], resumed_opt[k]["exp_avg"]) for k in full_opt)


def test_published_model_is_ema1_and_ema2_differs(tmp_path):
    trainer = make_trainer(tmp_path)
    trainer.train()
    model = trainer.model
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert torch.equal(param.detach().float(), trainer.ema1.shadow[name]), name
    assert any(not torch.equal(trainer.ema1.shadow[k], trainer.ema2.shadow[k]) for k in trainer.ema1.shadow)
    trainer.save_model()
    assert (tmp_path / "model.safetensors").is_file()


def test_warmup_in_epochs_then_constant(tmp_path):
    # 16 images, batch 4 -> 4 steps per epoch; 0.5 warm-up epochs = 2 steps: lr 0, lr/2, then lr.
    trainer = make_trainer(tmp_path, warmup_epochs=0.5, max_steps=5, learning_rate=1e-3)
    trainer.train()
    rates = [entry["learning_rate"] for entry in trainer.state.log_history if "learning_rate" in entry]
    assert rates == pytest.approx([0.0, 5e-4, 1e-3, 1e-3, 1e-3])


def test_lr_rule_and_validation(tmp_path):
    args = make_args(tmp_path, base_learning_rate=5e-5, per_device_train_batch_size=128, gradient_accumulation_steps=2)
    assert args.learning_rate == pytest.approx(5e-5 * 256 / 256)
    with pytest.raises(ValueError, match="loss_type"):
        make_args(tmp_path, loss_type="l1")
    with pytest.raises(ValueError, match="guidance_interval"):
        make_args(tmp_path, guidance_interval=[0.5, 0.1])


def test_step_randomness_is_a_function_of_the_step(tmp_path):
    trainer = make_trainer(tmp_path)
    images, labels = torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])
    trainer.model.train()
    first = trainer.diffusion_loss(trainer.model, images, labels)
    trainer.step_rng.reset()  # same step again, from scratch
    again = trainer.diffusion_loss(trainer.model, images, labels)
    second_micro = trainer.diffusion_loss(trainer.model, images, labels)
    assert torch.equal(first, again) and not torch.equal(first, second_micro)
