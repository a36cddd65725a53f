"""Run by `accelerate launch` with 2 CPU processes: a tiny `run_jit.py` training run, then each rank writes its final
weights to `<out_dir>/rank<r>.safetensors` for the test to compare. `python jit_ddp_worker.py OUT_DIR DATA_DIR`."""

from __future__ import annotations

import os
import sys

import safetensors.torch
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from jit_run_args import tiny_run_args

from rae_hf.scripts import run_jit


def main(out_dir: str, data_dir: str) -> None:
    captured = {}
    original = run_jit.JiTTrainer.train

    def train(self, *args, **kwargs):
        captured["trainer"] = self
        return original(self, *args, **kwargs)

    run_jit.JiTTrainer.train = train
    run_jit.main(tiny_run_args(out_dir, data_dir, "--ddp_backend", "gloo", "--max_steps", "4"))
    trainer = captured["trainer"]
    state = {k: v.contiguous() for k, v in trainer.model.state_dict().items()}
    state["ema2.qkv"] = trainer.ema2.shadow["blocks.0.attn.qkv.weight"].contiguous()
    rank = trainer.args.process_index
    metadata = {"world_size": str(trainer.args.world_size), "steps": str(trainer.state.global_step)}
    safetensors.torch.save_file(state, os.path.join(out_dir, f"rank{rank}.safetensors"), metadata=metadata)
    assert torch.isfinite(state["final_layer.linear.weight"]).all()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
