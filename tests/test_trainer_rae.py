"""RAETrainer: loss schedule, adaptive GAN weight wiring, checkpoints, exact resume, overfitting, NaN detection."""

from __future__ import annotations

import os

import pytest
import safetensors.torch
import torch
from conftest import SyntheticImages, make_args, tiny_discriminator, tiny_rae
from transformers import TrainerCallback

from rae_hf.data import ImageCollator
from rae_hf.losses import LPIPSLoss
from rae_hf.models.rae import RAEModel
from rae_hf.trainers.base import NonFiniteLossError
from rae_hf.trainers.rae import RAETrainer


def make_trainer(args, dataset=None, model=None) -> RAETrainer:
    return RAETrainer(
        model=model if model is not None else tiny_rae(),
        args=args,
        discriminator=tiny_discriminator(),
        perceptual_loss=LPIPSLoss(pretrained_backbone=False) if args.perceptual_weight > 0 else None,
        train_dataset=dataset if dataset is not None else SyntheticImages(),
        data_collator=ImageCollator(),
    )


class HeadSnapshots(TrainerCallback):
    """Copies of the discriminator heads after every optimizer step."""

    def __init__(self, trainer: RAETrainer):
        self.trainer = trainer
        self.snapshots = [self._heads()]

    def _heads(self) -> dict:
        return {k: v.clone() for k, v in self.trainer.discriminator.trainable_state_dict().items()}

    def on_step_end(self, args, state, control, **kwargs):
        self.snapshots.append(self._heads())


def heads_equal(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a if "weight" in k or "bias" in k)


def test_schedule_gates_discriminator_updates_and_gan_term(tmp_path):
    """No disc update before disc_upd_start, no GAN term (nor d_weight) before disc_start."""
    trainer = make_trainer(make_args(tmp_path, max_steps=5, disc_upd_start=2, disc_start=4, perceptual_weight=0))
    snapshots = HeadSnapshots(trainer)
    trainer.add_callback(snapshots)
    trainer.train()
    shots = snapshots.snapshots  # shots[s] = heads after s optimizer steps
    assert heads_equal(shots[0], shots[1]) and heads_equal(shots[1], shots[2])
    assert not heads_equal(shots[2], shots[3]) and not heads_equal(shots[3], shots[4])
    logs = {entry["step"]: entry for entry in trainer.state.log_history if "loss" in entry}
    for step in (1, 2, 3, 4):  # log at global step s covers the training step with index s-1
        assert "loss_gan" not in logs[step] and "d_weight" not in logs[step]
    assert "loss_gan" in logs[5] and logs[5]["d_weight"] > 0
    assert "loss_disc" not in logs[2] and "loss_disc" in logs[3]
    assert "loss_lpips" not in logs[1]  # perceptual loss disabled in this trainer


def test_epoch_schedule_converts_to_steps(tmp_path):
    """8 images, batch 4 -> 2 steps per epoch; 1.5 epochs -> step 3."""
    args = make_args(
        tmp_path,
        max_steps=-1,
        num_train_epochs=1,
        gan_schedule_unit="epoch",
        disc_start=1.5,
        disc_upd_start=1,
        lpips_start=0.5,
        perceptual_weight=0,
    )
    trainer = make_trainer(args)
    trainer.train()
    assert trainer.schedule_step("disc_start") == 3
    assert trainer.schedule_step("disc_upd_start") == 2
    assert trainer.schedule_step("lpips_start") == 1


def test_adaptive_weight_and_losses_logged(tmp_path):
    """Every loss term, d_weight, logits, both learning rates and images/s reach the logs."""
    trainer = make_trainer(make_args(tmp_path, max_steps=4))
    trainer.train()
    last = [entry for entry in trainer.state.log_history if "loss" in entry][-1]
    for key in (
        "loss_l1",
        "loss_lpips",
        "loss_gan",
        "d_weight",
        "loss_disc",
        "logits_real",
        "logits_fake",
        "learning_rate",
        "disc_learning_rate",
        "images_per_second",
        "skipped_images_total",
    ):
        assert key in last, key
    assert 0 < last["d_weight"] <= 1e4
    rows = (tmp_path / "logs.csv").read_text().splitlines()
    assert rows[0] == "step,epoch,name,value" and any(row.startswith("4,") and ",d_weight," in row for row in rows)


def test_overfit_few_images_halves_l1(tmp_path):
    """L1 reconstruction on 4 images falls by at least half."""
    args = make_args(
        tmp_path,
        max_steps=80,
        learning_rate=3e-3,
        disc_weight=0.0,
        perceptual_weight=0.0,
        ema_decay=0.0,
        per_device_train_batch_size=4,
    )
    model = tiny_rae(noise_tau=0.0)
    trainer = make_trainer(args, dataset=SyntheticImages(count=4), model=model)
    trainer.train()
    l1 = [entry["loss_l1"] for entry in trainer.state.log_history if "loss_l1" in entry]
    assert l1[-1] <= 0.5 * l1[0], (l1[0], l1[-1])


def test_nonfinite_loss_is_reported(tmp_path):
    model = tiny_rae()
    with torch.no_grad():
        model.decoder.decoder_pred.bias.fill_(float("nan"))
    trainer = make_trainer(make_args(tmp_path, max_steps=3, perceptual_weight=0), model=model)
    with pytest.raises(NonFiniteLossError, match="step 1"):
        trainer.train()


def _final_state(trainer: RAETrainer) -> dict[str, torch.Tensor]:
    state = {f"decoder.{k}": v for k, v in trainer.model.decoder.state_dict().items()}
    state.update({f"ema.{k}": v for k, v in trainer.ema.state_dict().items()})
    state.update({f"disc.{k}": v for k, v in trainer.discriminator.trainable_state_dict().items()})
    for i, group in enumerate(trainer.disc_optimizer.state.values()):
        state.update({f"disc_opt.{i}.{k}": v for k, v in group.items() if isinstance(v, torch.Tensor)})
    return state


def test_checkpoint_contents_and_exact_resume(tmp_path):
    """Resuming from a mid-run checkpoint ends with exactly the parameters of the uninterrupted run."""
    common = dict(max_steps=6, save_strategy="steps", save_steps=3, ema_decay=0.8, ema_apply_at_end=False)
    full = make_trainer(make_args(tmp_path / "full", **common))
    full.train()
    checkpoint = tmp_path / "full" / "checkpoint-3"
    files = set(os.listdir(checkpoint))
    assert {
        "model.safetensors",
        "ema.safetensors",
        "discriminator.safetensors",
        "discriminator_state.pt",
        "optimizer.pt",
        "scheduler.pt",
        "rng_state.pth",
        "trainer_state.json",
    } <= files
    saved = safetensors.torch.load_file(checkpoint / "model.safetensors")
    assert saved and not any(k.startswith("encoder.") for k in saved)  # the frozen encoder is not stored again

    resumed = make_trainer(make_args(tmp_path / "resumed", **common))
    resumed.train(resume_from_checkpoint=str(checkpoint))
    expected, actual = _final_state(full), _final_state(resumed)
    assert expected.keys() == actual.keys()
    mismatched = [k for k in expected if not torch.equal(expected[k], actual[k])]
    assert not mismatched, mismatched
    assert resumed.state.global_step == 6


def test_final_model_is_ema_and_self_contained(tmp_path):
    """After train() the model holds the EMA weights; save_model writes encoder + decoder, loadable offline."""
    trainer = make_trainer(make_args(tmp_path, max_steps=3, ema_decay=0.5))
    trainer.train()
    ema = trainer.ema.state_dict()
    for name, param in trainer.model.named_parameters():
        if param.requires_grad:
            assert torch.equal(param.detach(), ema[name]), name
    trainer.save_model(str(tmp_path / "final"))
    saved = safetensors.torch.load_file(tmp_path / "final" / "model.safetensors")
    assert any(k.startswith("encoder.") for k in saved)
    loaded = RAEModel.from_pretrained(tmp_path / "final").eval()
    images = SyntheticImages(count=2).images
    trainer.model.eval()
    assert torch.equal(loaded(images).reconstruction, trainer.model(images).reconstruction)


def test_gradient_accumulation_matches_bigger_batch(tmp_path):
    """Two accumulated micro-batches of 2 give the decoder the update of one batch of 4 (no noise, no GAN)."""
    base = dict(max_steps=2, disc_weight=0.0, ema_decay=0.0, perceptual_weight=0.0, data_seed=0)
    big = make_trainer(make_args(tmp_path / "a", per_device_train_batch_size=4, **base), model=tiny_rae(noise_tau=0))
    small = make_trainer(
        make_args(tmp_path / "b", per_device_train_batch_size=2, gradient_accumulation_steps=2, **base),
        model=tiny_rae(noise_tau=0),
    )
    big.train()
    small.train()
    for (name, a), b in zip(
        big.model.decoder.state_dict().items(), small.model.decoder.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_disc_updates_with_accumulation_rejected(tmp_path):
    with pytest.raises(ValueError, match="disc_updates"):
        make_args(tmp_path, disc_updates=2, gradient_accumulation_steps=2)


def test_profiler_writes_a_trace(tmp_path):
    trainer = make_trainer(make_args(tmp_path, max_steps=4, perceptual_weight=0, profile_steps=2))
    trainer.train()
    traces = list((tmp_path / "profile").glob("*.json*"))
    assert traces and traces[0].stat().st_size > 1000


def test_streaming_schedule_needs_step_units(tmp_path):
    """Epoch-based GAN schedules are undefined for data without a length: a clear error, not a silent guess."""
    from torch.utils.data import IterableDataset

    class Stream(IterableDataset):
        def __iter__(self):
            yield from SyntheticImages(count=8)

    trainer = make_trainer(make_args(tmp_path, gan_schedule_unit="epoch", perceptual_weight=0), dataset=Stream())
    with pytest.raises(ValueError, match="gan_schedule_unit step"):
        trainer.train()


def test_evaluate_reports_reconstruction_l1(tmp_path):
    """trainer.evaluate() gives the pixel L1 of the (noise-free) reconstructions as eval_loss."""
    trainer = make_trainer(make_args(tmp_path, perceptual_weight=0, per_device_eval_batch_size=4))
    dataset = SyntheticImages(count=4)
    metrics = trainer.evaluate(eval_dataset=dataset)
    model = trainer.model.eval()
    with torch.no_grad():
        expected = (model(dataset.images).reconstruction - dataset.images).abs().mean().item()
    assert metrics["eval_loss"] == pytest.approx(expected, rel=1e-5)
