"""RAETrainer: loss schedule, adaptive GAN weight wiring, checkpoints, exact resume, overfitting, NaN detection, and the
official stage-1 rules (frozen encoder, fresh eval-mode fakes, raw generator input, eval-mode discriminator in the
generator step, the discriminator's own lr schedule, the warm-up off-by-one, the fresh decoder initialization)."""

from __future__ import annotations

import math
import os

import pytest
import safetensors.torch
import torch
from conftest import SyntheticImages, make_args, tiny_discriminator, tiny_rae
from transformers import TrainerCallback

from rae_hf.data import ImageCollator
from rae_hf.losses import LPIPSLoss
from rae_hf.models.rae import RAEModel
from rae_hf.models.rae.discriminator import quantize_8bit
from rae_hf.trainers.base_trainer import NonFiniteLossError
from rae_hf.trainers.rae_trainer import RAETrainer


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
        "discriminator_state.safetensors",
        "discriminator_state.json",
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


# ----- official stage-1 rules (issue 10) --------------------------------------------------------------------------


def _official_lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """The official schedule written from its definition: (s + 1) / W during the warm-up, then cosine to min_ratio."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / (total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _encoder_absent_from_optimizer(trainer: RAETrainer) -> None:
    model = trainer.model
    assert not any(p.requires_grad for p in model.encoder.parameters()) and not model.encoder.training
    in_optimizer = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for p in model.decoder.parameters()}
    assert not any(k.startswith("encoder.") for k in trainer.ema.state_dict())


def test_encoder_frozen_after_from_pretrained_and_resume(tmp_path):
    """Loading re-creates parameters with requires_grad=True: the encoder must still be frozen, in eval mode and out
    of the optimizer and the EMA, for a loaded model and after resuming."""
    tiny_rae().save_pretrained(tmp_path / "saved")
    model = RAEModel.from_pretrained(tmp_path / "saved")
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert not model.train().encoder.training
    common = dict(max_steps=2, save_strategy="steps", save_steps=1, perceptual_weight=0)
    trainer = make_trainer(make_args(tmp_path / "run", **common), model=model)
    trainer.train()
    _encoder_absent_from_optimizer(trainer)
    resumed = make_trainer(
        make_args(tmp_path / "resumed", **common), model=RAEModel.from_pretrained(tmp_path / "saved")
    )
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-1"))
    _encoder_absent_from_optimizer(resumed)


def test_discriminator_sees_fresh_eval_reconstruction_after_the_update(tmp_path):
    """Fakes of the discriminator step = the updated decoder's eval-mode (noise-free) reconstruction of the batch,
    not the generator step's noised, pre-update one."""
    args = make_args(tmp_path, max_steps=1, disc_upd_start=0, disc_start=0, ema_decay=0.0, perceptual_weight=0)
    trainer = make_trainer(args, dataset=SyntheticImages(count=4))
    seen, generator_step = [], []
    trainer.disc_objective.register_forward_pre_hook(lambda m, a: seen.append([t.detach().clone() for t in a]))
    trainer.model.register_forward_hook(lambda m, a, out: generator_step.append(out.reconstruction.detach().clone()))
    trainer.train()
    ((real, fake),), (noised,) = seen, generator_step
    model = trainer.model.eval()
    with torch.no_grad():
        fresh = model(real).reconstruction
    torch.testing.assert_close(fake, fresh, rtol=1e-5, atol=1e-6)
    assert (fake - noised).abs().max() > 1e-3


def _record_generator_inputs(trainer: RAETrainer) -> list[tuple[torch.Tensor, bool]]:
    """(input image, discriminator training flag) of every discriminator call of the generator step (the one
    with frozen heads)."""
    calls = []

    def hook(module, args, kwargs):
        if not next(module.heads_parameters()).requires_grad:
            calls.append((args[0].detach().clone(), module.heads.training))

    trainer.discriminator.register_forward_pre_hook(hook, with_kwargs=True)
    return calls


@pytest.mark.parametrize("quantized", [False, True])
def test_generator_step_feeds_raw_reconstruction_to_eval_discriminator(tmp_path, quantized):
    """Official: the raw reconstruction, discriminator in eval mode (no spectral-norm power iteration); the
    8-bit straight-through input is the option `gan_quantize_generator_input`."""
    args = make_args(
        tmp_path,
        max_steps=3,
        disc_upd_start=0,
        disc_start=0,
        perceptual_weight=0,
        gan_quantize_generator_input=quantized,
    )
    trainer = make_trainer(args)
    reconstructions = []
    trainer.model.register_forward_hook(
        lambda m, a, out: reconstructions.append(out.reconstruction.detach().clone()) if m.training else None
    )
    calls = _record_generator_inputs(trainer)
    trainer.train()
    assert len(calls) == len(reconstructions) == 3
    for (image, training), reconstruction in zip(calls, reconstructions, strict=True):
        assert not training
        expected = quantize_8bit(reconstruction) if quantized else reconstruction
        torch.testing.assert_close(image, expected, rtol=0, atol=0)
    assert quantized or any(not torch.equal(image, quantize_8bit(image)) for image, _ in calls)


def test_discriminator_lr_steps_only_with_its_updates(tmp_path):
    """Its schedule (same warm-up/cosine as the decoder) starts when the discriminator starts updating."""
    args = make_args(
        tmp_path,
        max_steps=8,
        disc_upd_start=3,
        disc_start=3,
        warmup_steps=2,
        disc_learning_rate=1e-3,
        min_lr=1e-4,
        perceptual_weight=0,
    )
    trainer = make_trainer(args)
    used = []
    trainer.disc_optimizer.register_step_pre_hook(lambda opt, a, k: used.append(opt.param_groups[0]["lr"]))
    trainer.train()
    expected = [1e-3 * _official_lr_factor(k, 2, 8, 0.1) for k in range(5)]  # updates at steps 3..7
    assert used == pytest.approx(expected, rel=1e-6)


class DecoderLearningRates(TrainerCallback):
    def __init__(self):
        self.used = []

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.used.append(optimizer.param_groups[0]["lr"])


@pytest.mark.parametrize("starts_at_zero", [False, True])
def test_decoder_warmup_matches_official_off_by_one(tmp_path, starts_at_zero):
    args = make_args(
        tmp_path,
        max_steps=6,
        warmup_steps=3,
        min_lr=1e-4,
        disc_weight=0.0,
        perceptual_weight=0,
        warmup_starts_at_zero=starts_at_zero,
    )
    trainer = make_trainer(args)
    rates = DecoderLearningRates()
    trainer.add_callback(rates)
    trainer.train()
    official = [1e-3 * _official_lr_factor(s, 3, 6, 0.1) for s in range(6)]
    transformers_warmup = [1e-3 * s / 3 for s in range(3)] + official[3:]  # one step behind the official warm-up
    expected = transformers_warmup if starts_at_zero else official
    assert rates.used == pytest.approx(expected, rel=1e-6)
    assert (rates.used[0] == 0) == starts_at_zero


def test_fresh_decoder_init_is_pytorch_default_with_zero_cls():
    """Official: PyTorch's nn.Linear init (weights and biases U(+-1/sqrt(fan_in)) in distribution) and a zero CLS;
    `decoder_init="mae"` keeps xavier weights, zero biases and an N(0, 0.02) CLS."""
    decoder = tiny_rae().decoder
    assert torch.count_nonzero(decoder.trainable_cls_token) == 0
    linears = [m for m in decoder.modules() if isinstance(m, torch.nn.Linear)]
    for linear in linears:
        bound = 1 / math.sqrt(linear.in_features)
        assert linear.weight.abs().max() <= bound and linear.bias.abs().max() <= bound
        assert torch.count_nonzero(linear.bias) == linear.bias.numel()
    fc = decoder.decoder_layers[0].intermediate["dense"]  # 32 -> 64: pytorch std 0.102, xavier std 0.144
    assert fc.weight.std().item() == pytest.approx(1 / math.sqrt(32) / math.sqrt(3), rel=0.1)
    mae = tiny_rae(decoder_init="mae").decoder
    assert mae.decoder_layers[0].intermediate["dense"].weight.std().item() == pytest.approx(
        math.sqrt(6 / 96) / math.sqrt(3), rel=0.1
    )
    assert all(torch.count_nonzero(m.bias) == 0 for m in mae.modules() if isinstance(m, torch.nn.Linear))
    assert mae.trainable_cls_token.std().item() == pytest.approx(0.02, rel=0.5)


def test_disc_learning_rate_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="disc_learning_rate"):
        make_args(tmp_path, disc_learning_rate=0.0)
