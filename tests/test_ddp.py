"""Two CPU processes (gloo) train a few RAE steps with the GAN active; both ranks must end identical."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch
from conftest import launch_two_cpu_processes
from safetensors import safe_open


@pytest.mark.slow
def test_two_process_ddp_keeps_ranks_identical(tmp_path):
    result = launch_two_cpu_processes("ddp_worker.py", str(tmp_path))
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
