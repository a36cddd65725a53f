"""Two CPU processes (gloo) train a few RAE steps with the GAN active; both ranks must end identical."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
from safetensors import safe_open

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_two_process_ddp_keeps_ranks_identical(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ROOT / "accelerate_configs" / "cpu_ddp.yaml"),
        str(ROOT / "tests" / "ddp_worker.py"),
        str(tmp_path),
    ]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [safetensors.torch.load_file(tmp_path / f"rank{r}.safetensors") for r in (0, 1)]
    with safe_open(tmp_path / "rank0.safetensors", "pt") as f:
        metadata = f.metadata()
    assert metadata == {"world_size": "2", "gan_logged": "True"}
    assert ranks[0].keys() == ranks[1].keys()
    different = [k for k in ranks[0] if not torch.equal(ranks[0][k], ranks[1][k])]
    assert not different, different
    trained = [k for k in ranks[0] if k.startswith("decoder.")]
    assert any(not torch.equal(ranks[0][k], ranks[0][f"initial.{k}"]) for k in trained)
