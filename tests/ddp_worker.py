"""Run by `accelerate launch` / `torchrun` with 2 CPU processes: a few RAE steps with the GAN active, then each rank
writes its decoder and discriminator weights to `<out_dir>/rank<r>.safetensors` for the test to compare."""

from __future__ import annotations

import os
import sys

import safetensors.torch

sys.path.insert(0, os.path.dirname(__file__))

from conftest import SyntheticImages, tiny_discriminator, tiny_rae

from rae_hf.data import ImageCollator
from rae_hf.losses import LPIPSLoss
from rae_hf.trainers.rae import RAETrainer, RAETrainingArguments


def main(out_dir: str) -> None:
    args = RAETrainingArguments(
        output_dir=out_dir,
        per_device_train_batch_size=2,
        max_steps=4,
        learning_rate=1e-3,
        warmup_steps=0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
        gan_schedule_unit="step",
        lpips_start=0,
        disc_upd_start=0,
        disc_start=1,
        disc_learning_rate=1e-3,
        ema_decay=0.9,
        ddp_backend="gloo",
        disable_tqdm=True,
    )
    trainer = RAETrainer(
        model=tiny_rae(),
        args=args,
        discriminator=tiny_discriminator(),
        perceptual_loss=LPIPSLoss(pretrained_backbone=False),
        train_dataset=SyntheticImages(count=16),
        data_collator=ImageCollator(),
    )
    initial = {f"decoder.{k}": v.clone() for k, v in trainer.model.decoder.state_dict().items()}
    trainer.train()
    state = {f"decoder.{k}": v.contiguous() for k, v in trainer.model.decoder.state_dict().items()}
    state.update({f"disc.{k}": v.contiguous() for k, v in trainer.discriminator.trainable_state_dict().items()})
    state.update({f"initial.{k}": v for k, v in initial.items()})
    rank = trainer.args.process_index
    gan_logged = any("loss_gan" in entry for entry in trainer.state.log_history)
    safetensors.torch.save_file(
        state,
        os.path.join(out_dir, f"rank{rank}.safetensors"),
        metadata={"world_size": str(trainer.args.world_size), "gan_logged": str(gan_logged)},
    )


if __name__ == "__main__":
    main(sys.argv[1])
