"""Two CPU processes (gloo) train a few RAE steps with the GAN active; both ranks must end identical — also when
continuing from a saved RAE with `ddp_find_unused_parameters=False` (a trainable encoder would break DDP there)."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch
from conftest import launch_two_cpu_processes, tiny_rae
from safetensors import safe_open


def _check_ranks(out_dir) -> None:
    ranks = [safetensors.torch.load_file(out_dir / f"rank{r}.safetensors") for r in (0, 1)]
    with safe_open(out_dir / "rank0.safetensors", "pt") as f:
        metadata = f.metadata()
    assert metadata == {"world_size": "2", "gan_logged": "True", "steps": "4", "encoder_in_optimizer": "False"}
    assert ranks[0].keys() == ranks[1].keys()
    different = [k for k in ranks[0] if not torch.equal(ranks[0][k], ranks[1][k])]
    assert not different, different
    trained = [k for k in ranks[0] if k.startswith("decoder.")]
    assert any(not torch.equal(ranks[0][k], ranks[0][f"initial.{k}"]) for k in trained)


@pytest.mark.slow
def test_two_process_ddp_keeps_ranks_identical(tmp_path):
    result = launch_two_cpu_processes("rae/rae_ddp_worker.py", str(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    _check_ranks(tmp_path)


@pytest.mark.slow
def test_two_process_ddp_continues_saved_rae_without_unused_parameters(tmp_path):
    tiny_rae().save_pretrained(tmp_path / "saved")
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    result = launch_two_cpu_processes("rae/rae_ddp_worker.py", str(out_dir), str(tmp_path / "saved"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    _check_ranks(out_dir)
