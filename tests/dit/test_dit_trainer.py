"""DiTTrainer: overfitting, cached vs on-the-fly latents (same batch, same loss), exact mid-epoch resume, the
published lr schedule, the refusal of an RAE without latent statistics."""

from __future__ import annotations

import pytest
import torch
from conftest import cpu_training_args, tiny_rae
from torch.utils.data import Dataset
from torchvision.transforms import v2

from rae_hf.data import ImageCollator
from rae_hf.data.latent_cache import LatentCache, LatentCollator
from rae_hf.models.dit import DiTDHConfig, DiTDHModel
from rae_hf.trainers.dit_config import DiTTrainingArguments
from rae_hf.trainers.dit_trainer import DiTTrainer, PublishedLRSchedule

TINY = dict(
    in_channels=8,
    input_size=4,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    head_hidden_size=32,
    head_num_layers=1,
    head_num_attention_heads=2,
    num_classes=3,
)


class Latents(Dataset):
    """Fixed random latents `[count, C, 4, 4]` with labels `i % 3`."""

    def __init__(self, count: int = 16, channels: int = 8, seed: int = 0):
        self.latents = torch.randn(count, channels, 4, 4, generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return self.latents.shape[0]

    def __getitem__(self, index: int) -> dict:
        return {"latents": self.latents[index], "labels": index % 3}


class FlippedImages(Dataset):
    """Smooth images with labels; `flip=True` applies `v2.RandomHorizontalFlip` (the on-the-fly training data)."""

    def __init__(self, count: int = 12, flip: bool = True):
        coarse = torch.rand(count, 3, 4, 4, generator=torch.Generator().manual_seed(1))
        self.images = torch.nn.functional.interpolate(coarse, size=(32, 32), mode="bilinear")
        self.flip = v2.RandomHorizontalFlip() if flip else None

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> dict:
        image = self.images[index]
        return {"pixel_values": self.flip(image) if self.flip else image, "label": index % 3}


def make_args(output_dir, **overrides) -> DiTTrainingArguments:
    values = dict(per_device_train_batch_size=4, max_steps=6, learning_rate=2e-3, min_lr=2e-4, ema_decay=0.9)
    values |= dict(num_grid_samples=0)
    return cpu_training_args(DiTTrainingArguments, output_dir, **{**values, **overrides})


def tiny_dit(seed: int = 0, **overrides) -> DiTDHModel:
    torch.manual_seed(seed)
    return DiTDHModel(DiTDHConfig(**{**TINY, **overrides}))


def rae_with_stats():
    """Tiny RAE (32 x 4 x 4 latents) with non-trivial latent statistics."""
    rae = tiny_rae().eval()
    generator = torch.Generator().manual_seed(2)
    rae.set_latent_stats(
        torch.randn(32, 4, 4, generator=generator) * 0.1, torch.rand(32, 4, 4, generator=generator) + 0.5
    )
    return rae


@pytest.mark.slow
def test_loss_halves_when_overfitting_3_latents(tmp_path):
    # one latent per class: the label identifies it, so the velocity becomes predictable (no shift: s = 1)
    trainer = DiTTrainer(
        model=tiny_dit(),
        args=make_args(
            tmp_path,
            max_steps=400,
            per_device_train_batch_size=3,
            time_shift_dim=4096,
            learning_rate=1e-2,
            max_grad_norm=0.0,
        ),
        train_dataset=Latents(count=3),
        data_collator=LatentCollator(),
    )
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    first, last = sum(losses[:5]) / 5, sum(losses[-10:]) / 10  # means over steps: t is random per step
    assert last < 0.5 * first, (first, last)


def test_cached_and_on_the_fly_latents_give_the_same_batch_and_loss(tmp_path):
    rae = rae_with_stats()
    images = FlippedImages(flip=False)
    cache = LatentCache(str(tmp_path / "cache"))
    description = {"test": 1, "latent_shape": [32, 4, 4], "storage_dtype": "float32"}
    cached, reused = cache.load_or_build(
        description, lambda x: rae.encode(x).latents, images, ImageCollator(), batch_size=5
    )
    assert not reused and len(cached) == len(images)
    trainers = {}
    for name, dataset, collator in (
        ("fly", FlippedImages(flip=True), ImageCollator()),
        ("cache", cached, LatentCollator()),
    ):
        trainers[name] = DiTTrainer(
            model=tiny_dit(in_channels=32),
            args=make_args(tmp_path / name, max_steps=3, fid_steps=0, sample_every=0),
            rae=rae,
            train_dataset=dataset,
            data_collator=collator,
        )
    batches = {}
    for name, trainer in trainers.items():
        batch = next(iter(trainer.get_train_dataloader()))
        batches[name] = (trainer.latents(batch), batch["labels"])
    torch.testing.assert_close(batches["fly"][0], batches["cache"][0], rtol=1e-5, atol=1e-5)
    assert torch.equal(batches["fly"][1], batches["cache"][1])
    losses = {}
    for name, trainer in trainers.items():
        trainer.model.train()
        trainer.step_rng.reset()
        losses[name] = trainer.diffusion_loss(trainer.model, *batches[name])
    torch.testing.assert_close(losses["fly"], losses["cache"], rtol=1e-5, atol=1e-6)
    for trainer in trainers.values():  # three training steps from either source end in the same weights
        trainer.train()
    for name, value in trainers["fly"].model.state_dict().items():
        torch.testing.assert_close(trainers["cache"].model.state_dict()[name], value, rtol=1e-4, atol=1e-6)


def make_trainer(output_dir, seed: int = 0, **overrides) -> DiTTrainer:
    return DiTTrainer(
        model=tiny_dit(seed),
        args=make_args(output_dir, **overrides),
        train_dataset=Latents(count=16),
        data_collator=LatentCollator(),
    )


def test_exact_mid_epoch_resume(tmp_path):
    # 16 latents, batch 4: 4 steps per epoch; the checkpoint at step 5 is mid-epoch, inside the lr decay.
    schedule = dict(lr_decay_start_epochs=0.5, lr_decay_end_epochs=1.5, save_strategy="steps", save_steps=5)
    full = make_trainer(tmp_path / "full", max_steps=8, **schedule)
    full.train()
    checkpoint = tmp_path / "full" / "checkpoint-5"
    assert (checkpoint / "ema.safetensors").is_file()
    resumed = make_trainer(tmp_path / "full", seed=123, max_steps=8, **schedule)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    for name, value in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name
    assert all(torch.equal(full.ema.shadow[k], resumed.ema.shadow[k]) for k in full.ema.shadow)
    full_losses = [e["loss"] for e in full.state.log_history if "loss" in e]
    resumed_losses = [e["loss"] for e in resumed.state.log_history if "loss" in e]
    assert resumed_losses[-3:] == full_losses[-3:]


def test_published_lr_schedule(tmp_path):
    # 4 steps per epoch: warm-up 1 step, constant to step 2, linear to 0.1 x lr at step 6, then constant.
    trainer = make_trainer(
        tmp_path,
        max_steps=8,
        learning_rate=1e-3,
        min_lr=1e-4,
        lr_warmup_epochs=0.25,
        lr_decay_start_epochs=0.5,
        lr_decay_end_epochs=1.5,
    )
    trainer.train()
    rates = [entry["learning_rate"] for entry in trainer.state.log_history if "learning_rate" in entry]
    expected = [1e-3 * PublishedLRSchedule(1, 2, 6, 0.1)(step) for step in range(8)]
    assert rates == pytest.approx(expected)
    assert expected[:4] == pytest.approx([0.0, 1e-3, 1e-3, 1e-3 * 0.775])
    groups = trainer.optimizer.param_groups
    assert all(g["betas"] == (0.9, 0.95) and g["weight_decay"] == 0.0 and g["eps"] == 1e-8 for g in groups)


def test_rae_without_latent_statistics_is_refused(tmp_path):
    rae = tiny_rae()
    with pytest.raises(ValueError, match="--compute_latent_stats"):
        DiTTrainer(
            model=tiny_dit(in_channels=32),
            args=make_args(tmp_path),
            rae=rae,
            train_dataset=FlippedImages(),
            data_collator=ImageCollator(),
        )


def test_time_shift_and_arguments(tmp_path):
    trainer = make_trainer(tmp_path)  # 8 x 4 x 4 = 128 dims: shift sqrt(128 / 4096) < 1, allowed
    assert trainer.time_shift == pytest.approx((128 / 4096) ** 0.5)
    assert trainer.model.config.time_shift is None  # the latent shape's own shift: nothing to record
    shifted = make_trainer(tmp_path, time_shift_dim=196608)
    assert shifted.time_shift == pytest.approx(48**0.5)
    assert shifted.model.config.time_shift == shifted.time_shift  # saved with the model: the pipeline's default
    shifted.model.save_pretrained(tmp_path / "shifted")
    assert DiTDHModel.from_pretrained(tmp_path / "shifted").config.time_shift == pytest.approx(48**0.5)
    with pytest.raises(ValueError, match="time_shift"):
        DiTDHConfig.from_preset("DiTDH-S", time_shift=0.0)
    with pytest.raises(ValueError, match="time_dist_type"):
        make_args(tmp_path, time_dist_type="beta")
    with pytest.raises(ValueError, match="lr_decay_end_epochs"):
        make_args(tmp_path, lr_decay_start_epochs=10, lr_decay_end_epochs=5)
