"""The probe as an API (issue 18, point 2): `rae_hf.probe.runner` runs without argv and gives `run_probe.py`'s
numbers; DINO's before/after kNN (`dino_setup.probe_knn`) calls it directly and equals `run_probe.py --mode knn`;
the two scripts stay thin (parse -> build -> train/evaluate -> save)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from probe_toys import save_tiny_encoder

from rae_hf.data import DataArguments
from rae_hf.probe import feature_variants, load_encoder
from rae_hf.probe.runner import FeatureOptions, frozen_probe, load_labeled_splits
from rae_hf.scripts import run_probe
from rae_hf.trainers.dino_setup import probe_knn
from rae_hf.trainers.probe_config import ProbeTrainingArguments

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory) -> str:
    return save_tiny_encoder(tmp_path_factory.mktemp("encoder"))


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Path:
    """An image folder of 3 noisy colour classes (train 18, validation 9)."""
    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("validation", 3)):
        for name, colour in (("red", (220, 40, 40)), ("green", (40, 200, 60)), ("blue", (40, 60, 220))):
            (root / split / name).mkdir(parents=True)
            for index in range(count):
                pixels = np.clip(np.array(colour) + rng.integers(-60, 61, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{index}.png")
    return root


def _data(folders: Path) -> DataArguments:
    return DataArguments(train_dir=str(folders / "train"), validation_dir=str(folders / "validation"))


def _cli(encoder_dir: str, folders: Path, output: Path, *extra: str) -> dict:
    return run_probe.main(
        ["--model_name_or_path", encoder_dir, "--train_dir", str(folders / "train"), "--validation_dir",
         str(folders / "validation"), "--output_dir", str(output), "--use_cpu", "true", "--report_to", "none",
         "--disable_tqdm", "true", *extra]
    )  # fmt: skip


def test_frozen_probe_runs_without_argv_like_the_script(encoder_dir, folders, tmp_path):
    args = ProbeTrainingArguments(output_dir=str(tmp_path / "api"), use_cpu=True, report_to="none")
    args.resolve_defaults("linear")
    encoder = load_encoder(encoder_dir)
    splits, label_column = load_labeled_splits(_data(folders), args.seed)
    variants = feature_variants(["cls", "mean"], [4], "no")
    options = FeatureOptions(batch_size=args.per_device_eval_batch_size, seed=args.seed)
    results, classifier = frozen_probe(encoder, splits, label_column, variants, "linear", options, args)
    assert classifier is not None and classifier.config.feature == results["best"]["feature"]
    assert results["data"] == {"num_train": 18, "num_validation": 9, "num_classes": 3, "num_skipped_images": 0}
    script = _cli(encoder_dir, folders, tmp_path / "cli", "--pooling", "cls", "mean")
    assert results["heads"] == script["heads"] and results["best"] == script["best"]
    assert results["knn"] == script["knn"]


def test_dino_probe_knn_equals_run_probe_knn(encoder_dir, folders, tmp_path):
    top1 = probe_knn(encoder_dir, _data(folders), None, str(tmp_path / "api"))
    script = _cli(encoder_dir, folders, tmp_path / "cli", "--mode", "knn", "--pooling", "cls")
    stored = json.loads((tmp_path / "api" / "probe_results.json").read_text())
    assert stored["knn"] == script["knn"] and stored["warnings"] == script["warnings"]
    assert top1 == max(entry["top1"] for entry in script["knn"])


@pytest.mark.parametrize("script", ["run_probe.py", "run_dino_pretrain.py"])
def test_scripts_are_thin_and_import_no_other_script(script):
    path = ROOT / "rae_hf" / "scripts" / script
    source = path.read_text()
    assert len(source.splitlines()) <= 200
    imported = {node.module for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ImportFrom) and node.module}
    assert not [name for name in imported if name.startswith("rae_hf.scripts")]
    assert "torchvision" not in source and "np.random" not in source  # transforms and data live in the packages
