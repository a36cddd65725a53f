"""run_jit.py: recipes parse, tiny image and text runs write what they promise, evaluation sweep, 2 processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch
from conftest import ROOT, launch_two_cpu_processes
from jit_run_args import tiny_run_args

import run_jit
from rae_hf.cli import parse_args
from rae_hf.evaluation.generation import GenerationEvalArguments
from rae_hf.models.jit import JiTModel
from rae_hf.scripts.run_jit import (
    DataArguments,
    JiTTrainingArguments,
    ModelArguments,
    TaskArguments,
)
from rae_hf.tools.quickstart_assets import ensure_image_folders

RECIPES = sorted((ROOT / "recipes" / "jit").glob("*.yaml"))
SPLITS = {"train": 16, "validation": 8, "test": 0}


@pytest.fixture(scope="module")
def image_data(tmp_path_factory) -> str:
    return ensure_image_folders(str(tmp_path_factory.mktemp("jit") / "data"), image_size=16, splits=SPLITS)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipes_parse(recipe, tmp_path):
    args = parse_args(
        (ModelArguments, TaskArguments, DataArguments, GenerationEvalArguments, JiTTrainingArguments),
        [str(recipe), "--output_dir", str(tmp_path), "--use_cpu", "true", "--bf16", "false"],
    )
    training = args[-1]
    assert training.adam_beta2 == 0.95 and training.weight_decay == 0.0
    if "imagenet256_b16" in recipe.name:
        assert training.learning_rate == pytest.approx(5e-5 * 128 / 256)  # per 1 process; 2e-4 on 8 x 128
        assert (training.ema_decay, training.ema_decay2, training.guidance_scale) == (0.9999, 0.9996, 3.0)
    assert len(RECIPES) >= 6


def test_image_run_writes_grid_model_and_card(tmp_path, image_data):
    out = tmp_path / "run"
    run_jit.main(tiny_run_args(str(out), image_data, "--max_steps", "3", "--guidance_scale", "2.0"))
    assert list((out / "samples").glob("step_*.png"))
    model = JiTModel.from_pretrained(out)
    assert model.config.num_classes == 4 and model.config.image_size == 16  # the dataset's 4 shape classes
    assert "JiT" in (out / "README.md").read_text()
    config = json.loads((out / "run_config.json").read_text())
    assert config["TaskArguments"]["task"] == "image"


@pytest.mark.slow
def test_eval_sweep_writes_one_row_per_scale(tmp_path, image_data):
    inception = tmp_path / "inception.pth"
    from rae_hf.metrics import save_random_inception_weights

    save_random_inception_weights(inception)
    model_dir = tmp_path / "run"
    run_jit.main(tiny_run_args(str(model_dir), image_data, "--max_steps", "1"))
    stats = tmp_path / "stats.npz"
    common = ["--inception_weights", str(inception), "--model_name_or_path", str(model_dir)]
    run_jit.main(tiny_run_args(str(tmp_path / "s"), image_data, *common, "--compute_fid_stats", str(stats)))
    assert stats.is_file()
    eval_dir = tmp_path / "eval"
    run_jit.main(
        tiny_run_args(str(eval_dir), image_data, *common, "--do_train", "false", "--do_eval", "true")
        + ["--fid_reference_stats", str(stats), "--num_eval_samples", "8", "--guidance_scales", "1.0", "3.0"]
    )
    rows = json.loads((eval_dir / "eval_results.json").read_text())
    assert [row["guidance_scale"] for row in rows] == [1.0, 3.0]
    assert all(row["num_samples"] == 8 and row["fid"] > 0 and row["inception_score"] > 0 for row in rows)


def test_text_run_logs_recovery_metrics(tmp_path):
    out = tmp_path / "text"
    data = tmp_path / "texts"
    data.mkdir()
    (data / "train.txt").write_text("\n".join(f"line {i} héllo 🌍" for i in range(12)) + "\n", encoding="utf-8")
    (data / "val.txt").write_text("held out\nanother one\n", encoding="utf-8")
    args = tiny_run_args(str(out), "unused", "--max_steps", "2", "--task", "text", "--text_metrics_samples", "4")
    args = args[4:]  # no image folders
    args += ["--dataset_name", str(data / "train.txt"), "--text_validation_file", str(data / "val.txt")]
    args += ["--image_size", "16", "--num_classes", "0", "--save_best_loss", "true", "--num_train_epochs", "1"]
    run_jit.main(args)
    logged = {}
    for entry in json.loads((out / "trainer_state.json").read_text())["log_history"]:
        logged.update(entry)
    for split in ("train", "eval"):
        for key in ("token_acc_t0.25", "token_acc_t0.75", "text_acc_t0.5", "token_acc_sampler"):
            assert 0.0 <= logged[f"text_{split}_{key}"] <= 1.0
    sampled = [json.loads(line) for line in (out / "text_samples.jsonl").read_text().splitlines()]
    assert len(sampled[-1]["texts"]) == 4
    assert (out / "best" / "model.safetensors").is_file()


@pytest.mark.slow
def test_two_process_cpu_run(tmp_path, image_data):
    result = launch_two_cpu_processes("jit/jit_ddp_worker.py", str(tmp_path), image_data)
    assert result.returncode == 0, result.stderr[-3000:]
    states = []
    for rank in (0, 1):
        with safetensors.safe_open(str(tmp_path / f"rank{rank}.safetensors"), "pt") as handle:
            assert handle.metadata() == {"world_size": "2", "steps": "4"}
        states.append(safetensors.torch.load_file(tmp_path / f"rank{rank}.safetensors"))
    for name, value in states[0].items():
        assert torch.equal(states[1][name], value), name
    assert Path(tmp_path / "model.safetensors").is_file()
