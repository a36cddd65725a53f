"""Run by `accelerate launch` with 2 CPU processes: a tiny `run_rae_dit.py` run from a latent cache built by both
processes (one shard each); each rank writes its final weights to `<out>/rank<r>.safetensors` for the test.
`python dit_run_worker.py OUT_DIR DATA_DIR RAE_DIR`."""

from __future__ import annotations

import os
import sys

import safetensors.torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from dit_run_args import tiny_run_args

from rae_hf.scripts import run_rae_dit


def main(out_dir: str, data_dir: str, rae_dir: str) -> None:
    captured = {}
    original = run_rae_dit.DiTTrainer.train

    def train(self, *args, **kwargs):
        captured["trainer"] = self
        return original(self, *args, **kwargs)

    run_rae_dit.DiTTrainer.train = train
    run = os.path.join(out_dir, "run")
    run_rae_dit.main(tiny_run_args(run, data_dir, rae_dir, "--ddp_backend", "gloo", "--max_steps", "3"))
    trainer = captured["trainer"]
    state = {k: v.contiguous() for k, v in trainer.model.state_dict().items()}
    rank = trainer.args.process_index
    metadata = {"world_size": str(trainer.args.world_size), "steps": str(trainer.state.global_step)}
    safetensors.torch.save_file(state, os.path.join(out_dir, f"rank{rank}.safetensors"), metadata=metadata)


if __name__ == "__main__":
    main(*sys.argv[1:4])
