"""Run by `accelerate launch` with 2 CPU processes: a few RAE steps with the GAN active, then each rank writes its
decoder and discriminator weights to `<out_dir>/rank<r>.safetensors` for the test to compare.

`python rae_ddp_worker.py OUT_DIR [SAVED_RAE]`: with SAVED_RAE the model is continued from that saved RAE
(`from_pretrained`) with `ddp_find_unused_parameters=False`, as the 8-GPU recipe runs."""

from __future__ import annotations

import os
import sys

import safetensors.torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: the shared conftest

from conftest import SyntheticImages, make_args, tiny_discriminator, tiny_rae

from rae_hf.data import ImageCollator
from rae_hf.losses import LPIPSLoss
from rae_hf.models.rae import RAEModel
from rae_hf.trainers.rae_trainer import RAETrainer


def main(out_dir: str, saved_rae: str | None = None) -> None:
    extra = {"ddp_find_unused_parameters": False} if saved_rae else {}
    args = make_args(
        out_dir, per_device_train_batch_size=2, disc_upd_start=0, disc_start=1, ddp_backend="gloo", **extra
    )
    model = RAEModel.from_pretrained(saved_rae) if saved_rae else tiny_rae()
    trainer = RAETrainer(
        model=model,
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
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    encoder_in_optimizer = any(id(p) in optimized for p in trainer.model.encoder.parameters())
    safetensors.torch.save_file(
        state,
        os.path.join(out_dir, f"rank{rank}.safetensors"),
        metadata={
            "world_size": str(trainer.args.world_size),
            "gan_logged": str(gan_logged),
            "steps": str(trainer.state.global_step),
            "encoder_in_optimizer": str(encoder_in_optimizer),
        },
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
