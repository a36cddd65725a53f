"""Every CPU quickstart recipe, shortened to a couple of steps, run once per test session under a temporary folder
(its inputs are made there as on a fresh clone); the interop tests read what the runs published."""

from __future__ import annotations

import contextlib
import importlib
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# name -> (script module, recipe, output folder under runs/quickstart, overrides that keep the run to seconds)
QUICKSTARTS = {
    "rae": ("run_rae", "rae/quickstart.yaml", "rae", ["--max_steps", "2", "--fid_steps", "0", "--sample_every", "0"]),
    "jit": ("run_jit", "jit/quickstart.yaml", "jit", ["--max_steps", "4", "--fid_steps", "0", "--num_grid_samples", "4",
            "--sample_steps", "2", "--logging_steps", "2", "--save_best_loss", "true"]),  # one epoch: best/ too
    "dino": ("run_dino_pretrain", "dino/quickstart.yaml", "dino", ["--max_steps", "2", "--num_train_epochs", "1",
             "--probe_before_after", "false", "--dataloader_num_workers", "0"]),
    "probe": ("run_probe", "probe/quickstart.yaml", "probe", []),
    "probe_lora": ("run_probe", "probe/quickstart_lora.yaml", "probe-lora", ["--max_steps", "2",
                   "--min_finetune_steps", "0"]),
    "prune": ("run_prune", "prune/quickstart.yaml", "prune", ["--prune_rounds", "1", "--num_train_epochs", "1",
              "--synthetic_train_size", "64", "--synthetic_validation_size", "32"]),
}  # fmt: skip


@contextlib.contextmanager
def _working_directory(path: Path):
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def run_quickstart(name: str, root: Path) -> Path:
    """Run quickstart `name` with its working directory `root` (its `runs/quickstart/...` land there); returns its
    output folder."""
    script, recipe, output, overrides = QUICKSTARTS[name]
    main = importlib.import_module(f"rae_hf.scripts.{script}").main
    with _working_directory(root):
        main([str(ROOT / "recipes" / recipe), *overrides])
    return root / "runs" / "quickstart" / output


def published_files(output_dir: Path) -> list[Path]:
    """Every file a run leaves in its output folder, except inside `checkpoint-N` folders (resume state, which
    Trainer itself pickles) and the W&B / TensorBoard run folders."""
    skipped = ("checkpoint-", "wandb", "runs")
    return sorted(
        path
        for path in output_dir.rglob("*")
        if path.is_file() and not any(part.startswith(skipped) for part in path.relative_to(output_dir).parts)
    )


_RUNS: dict[str, Path] = {}  # one run of each quickstart per session, whichever test module asks first


def quickstart_output(name: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output folder of quickstart `name`, run on first use in this session (all under one root, as the
    quickstarts share their inputs under `runs/quickstart`)."""
    if name not in _RUNS:
        root = next(iter(_RUNS.values())).parents[2] if _RUNS else tmp_path_factory.mktemp("quickstarts")
        _RUNS[name] = run_quickstart(name, root)
    return _RUNS[name]
