"""JiT under FSDP2 (accelerate_configs/cpu_fsdp.yaml, 2 CPU processes over gloo): sharded training, sharded
checkpoints with both EMAs, exact resume, and a final save that loads with `from_pretrained`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import safetensors
import safetensors.torch
import torch
from conftest import ROOT

from rae_hf.models.jit import JiTModel
from rae_hf.tools.quickstart_assets import ensure_image_folders


def launch_cpu_fsdp(*script_args: str) -> subprocess.CompletedProcess:
    """`accelerate launch` of tests/jit/jit_fsdp_worker.py with accelerate_configs/cpu_fsdp.yaml on a free port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = ROOT / "accelerate_configs" / "cpu_fsdp.yaml"
    worker = ROOT / "tests" / "jit" / "jit_fsdp_worker.py"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
    command += ["--main_process_port", str(port), str(worker), *script_args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def load(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safetensors.safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
    return safetensors.torch.load_file(path), metadata


@pytest.mark.slow
def test_fsdp_train_checkpoint_resume_and_save(tmp_path):
    data = ensure_image_folders(str(tmp_path / "data"), image_size=16, splits={"train": 16, "validation": 8})
    out = tmp_path / "run"
    result = launch_cpu_fsdp(str(out), data)
    assert result.returncode == 0, result.stderr[-4000:]

    checkpoint = out / "checkpoint-2"
    assert (checkpoint / "pytorch_model_fsdp_0").is_dir() and (checkpoint / "optimizer_0").is_dir()  # sharded
    ema2_mid = safetensors.torch.load_file(checkpoint / "ema2.safetensors")  # gathered: full shapes
    held = {}
    for run in ("full", "resumed"):
        for rank in (0, 1):
            held[run, rank], metadata = load(out / f"{run}_rank{rank}.safetensors")
            assert metadata == {"world_size": "2", "steps": "4"}
    reference = held["full", 0]
    assert torch.isfinite(reference["losses"]).all() and len(reference["losses"]) == 4
    assert ema2_mid.keys() == {k[5:] for k in reference if k.startswith("ema2.")}
    assert not torch.equal(ema2_mid["blocks.0.attn.qkv.weight"], reference["ema2.blocks.0.attn.qkv.weight"])
    for key, state in held.items():  # both ranks hold the same weights; the resumed run equals the full one
        for name, value in reference.items():
            assert torch.equal(state[name], value), (key, name)

    model = JiTModel.from_pretrained(out)  # the final save: full weights (EMA 1 applied), not shards
    assert (out / "modeling_jit.py").is_file() and not (out / "_fsdp_api.py").exists()
    saved = model.state_dict()
    final = held["resumed", 0]
    for name, value in saved.items():
        assert torch.equal(value, final[name]), name
    ema1 = {k[5:]: v for k, v in final.items() if k.startswith("ema1.")}
    assert ema1 and all(torch.equal(saved[name], value) for name, value in ema1.items())
    checkpoint_ema1 = safetensors.torch.load_file(out / "checkpoint-4" / "ema1.safetensors")
    assert all(torch.equal(checkpoint_ema1[name], value) for name, value in ema1.items())
