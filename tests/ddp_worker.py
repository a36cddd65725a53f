"""Run by `accelerate launch` / `torchrun` with 2 CPU processes: a few RAE steps with the GAN active, then each rank
writes its decoder and discriminator weights to `<out_dir>/rank<r>.safetensors` for the test to compare."""

from __future__ import annotations

import os
import sys

import safetensors.torch

sys.path.insert(0, os.path.dirname(__file__))

from conftest import SyntheticImages, make_args, tiny_discriminator, tiny_rae

from rae_hf.data import ImageCollator
from rae_hf.losses import LPIPSLoss
from rae_hf.trainers.rae import RAETrainer


def main(out_dir: str) -> None:
    args = make_args(out_dir, per_device_train_batch_size=2, disc_upd_start=0, disc_start=1, ddp_backend="gloo")
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
