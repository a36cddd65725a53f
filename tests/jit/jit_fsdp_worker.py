"""Run by `accelerate launch --config_file accelerate_configs/cpu_fsdp.yaml` (2 CPU processes, gloo): a tiny
`run_jit.py` run under FSDP2 with checkpoints at steps 2 and 4, then a second run resumed from `checkpoint-2`. After
each run every rank writes what it holds (full weights gathered from its shards, both EMAs, the logged losses) to
`<out_dir>/<run>_rank<r>.safetensors`. `python jit_fsdp_worker.py OUT_DIR DATA_DIR`.

Accelerate 1.15 never enables FSDP on the CPU: with `use_cpu` its state picks `DistributedType.MULTI_CPU`, and only
GPU-type distributed setups are turned into `FSDP` (a plain launch with cpu_fsdp.yaml trains with DDP). `_cpu_fsdp()`
reports the CPU gloo setup as a GPU-type one with the device pinned to the CPU, so Accelerate's real FSDP2 path
(`fully_shard`, sharded checkpoints, gathered saves) runs on the CPU.
"""

from __future__ import annotations

import os
import sys

import safetensors.torch
import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from accelerate.state import PartialState
from accelerate.utils import DistributedType
from jit_run_args import tiny_run_args
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

from rae_hf.scripts import run_jit


def _cpu_fsdp() -> None:
    os.environ["ACCELERATE_TORCH_DEVICE"] = "cpu"
    original = PartialState._prepare_backend

    def prepare_backend(self, cpu=False, sagemaker_dp=False, backend=None):
        backend, distributed_type = original(self, cpu, sagemaker_dp, backend)
        if distributed_type == DistributedType.MULTI_CPU and os.environ.get("ACCELERATE_USE_FSDP") == "true":
            return "gloo", DistributedType.MULTI_GPU
        return backend, distributed_type

    PartialState._prepare_backend = prepare_backend
    dist.init_process_group("gloo")


def run(out_dir: str, data_dir: str, name: str, *extra: str) -> None:
    captured = {}
    original = run_jit.JiTTrainer.train

    def train(self, *args, **kwargs):
        captured["trainer"] = self
        return original(self, *args, **kwargs)

    run_jit.JiTTrainer.train = train
    args = ("--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2")
    run_jit.main(tiny_run_args(out_dir, data_dir, *args, *extra))
    run_jit.JiTTrainer.train = original
    trainer = captured["trainer"]
    model = trainer.model
    assert trainer.is_fsdp_enabled and isinstance(model, FSDPModule), type(model)
    assert isinstance(model.blocks[0].attn.qkv.weight, DTensor)
    held = {k: (v.full_tensor() if isinstance(v, DTensor) else v).contiguous() for k, v in model.state_dict().items()}
    for ema in ("ema1", "ema2"):
        held |= {f"{ema}.{k}": v for k, v in getattr(trainer, ema).state_dict().items()}
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    held["losses"] = torch.tensor(losses, dtype=torch.float64)
    rank = trainer.args.process_index
    metadata = {"world_size": str(trainer.args.world_size), "steps": str(trainer.state.global_step)}
    safetensors.torch.save_file(held, os.path.join(out_dir, f"{name}_rank{rank}.safetensors"), metadata=metadata)


def main(out_dir: str, data_dir: str) -> None:
    _cpu_fsdp()
    run(out_dir, data_dir, "full")
    dist.barrier()
    run(out_dir, data_dir, "resumed", "--resume_from_checkpoint", os.path.join(out_dir, "checkpoint-2"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
