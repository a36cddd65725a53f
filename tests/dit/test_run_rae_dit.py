"""run_rae_dit.py: recipes parse, a tiny run from a latent cache writes the model, the labelled grid and the cache,
evaluation gives one gFID/IS row per guidance scale, an RAE without statistics is refused, 2 processes agree."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch
from conftest import ROOT, launch_two_cpu_processes, tiny_rae
from dit_run_args import tiny_run_args

import run_rae_dit
from rae_hf.cli import parse_args
from rae_hf.evaluation.generation import GenerationEvalArguments
from rae_hf.metrics import save_random_inception_weights
from rae_hf.models.dit import DiTDHModel
from rae_hf.scripts.run_rae_dit import (
    DataArguments,
    DiTTrainingArguments,
    LatentArguments,
    ModelArguments,
)
from rae_hf.tools.quickstart_assets import ensure_image_folders

RECIPES = sorted((ROOT / "recipes" / "rae_dit").glob("*.yaml"))
SPLITS = {"train": 8, "validation": 4, "test": 0}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("rae_dit")
    data = ensure_image_folders(str(root / "data"), image_size=32, splits=SPLITS)
    rae = tiny_rae()
    rae.save_pretrained(root / "rae-raw")
    generator = torch.Generator().manual_seed(0)
    rae.set_latent_stats(torch.randn(32, 4, 4, generator=generator) * 0.1, torch.rand(32, 4, 4) + 0.5)
    rae.save_pretrained(root / "rae")
    return root, data


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipes_parse(recipe, tmp_path):
    args = parse_args(
        (ModelArguments, LatentArguments, DataArguments, GenerationEvalArguments, DiTTrainingArguments),
        [str(recipe), "--output_dir", str(tmp_path), "--use_cpu", "true", "--bf16", "false"],
    )
    training = args[-1]
    assert training.adam_beta2 == 0.95 and training.weight_decay == 0.0 and training.max_grad_norm == 1.0
    if "ditdh_xl_dinov2_b_imagenet256" in recipe.name:
        assert (training.learning_rate, training.min_lr, training.ema_decay) == (2e-4, 2e-5, 0.9995)
        assert (training.lr_decay_start_epochs, training.lr_decay_end_epochs) == (40, 800)
    assert len(RECIPES) >= 4


@pytest.mark.slow
def test_tiny_run_writes_model_grid_cache_then_evaluates(tmp_path, assets):
    root, data = assets
    out = tmp_path / "run"
    run_rae_dit.main(tiny_run_args(str(out), data, str(root / "rae"), "--max_steps", "3"))
    model = DiTDHModel.from_pretrained(out)
    assert model.config.num_classes == 4 and model.config.latent_shape == (32, 4, 4)
    assert list((out / "samples").glob("step_*.png"))
    assert json.loads((tmp_path / "run-latents" / "latent_cache.json").read_text())["num_items"] == 8
    assert "DiT-DH" in (out / "README.md").read_text()
    inception = tmp_path / "inception.pth"
    save_random_inception_weights(str(inception))
    evaluation = tiny_run_args(
        str(tmp_path / "eval"), data, str(root / "rae"), "--model_name_or_path", str(out), "--do_train", "false",
        "--do_eval", "true", "--num_eval_samples", "4", "--guidance_scales", "1.0", "2.0", "--guidance", "cfg",
        "--inception_weights", str(inception), "--save_samples", "true",
    )  # fmt: skip
    run_rae_dit.main(evaluation)
    rows = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    assert [row["guidance_scale"] for row in rows] == [1.0, 2.0] and all(row["num_samples"] == 4 for row in rows)
    assert list((tmp_path / "eval" / "samples").rglob("*.npz"))


def test_rae_without_statistics_is_refused_with_the_command(tmp_path, assets):
    root, data = assets
    with pytest.raises(ValueError, match=r"run_rae.py --model_name_or_path .* --compute_latent_stats"):
        run_rae_dit.main(tiny_run_args(str(tmp_path / "run"), data, str(root / "rae-raw"), "--max_steps", "1"))
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_two_processes_train_the_same_model_from_a_sharded_cache(tmp_path, assets):
    root, data = assets
    result = launch_two_cpu_processes("dit/dit_run_worker.py", str(tmp_path), data, str(root / "rae"))
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [safetensors.torch.load_file(tmp_path / f"rank{r}.safetensors") for r in (0, 1)]
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])
    with safetensors.safe_open(tmp_path / "rank0.safetensors", "pt") as f:
        assert f.metadata() == {"world_size": "2", "steps": "3"}
    metadata = json.loads((tmp_path / "run-latents" / "latent_cache.json").read_text())
    assert [shard["rows"] for shard in metadata["shards"]] == [4, 4]
