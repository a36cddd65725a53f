"""Reliability of the probe (issue 9, point 10): corrupted or overwritten feature caches are detected (path named) and
extracted again; the report is written whatever the heads did (all diverged, 0-100% ranges, a failing plot); flat
image folders get a clear error; validation classes unseen in train give a warning; identical seeded runs give
identical accuracies; a refused rerun of a finished probe writes nothing (issue 20, point 2)."""

from __future__ import annotations

import hashlib
import json
import logging
import os

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from probe_toys import save_tiny_encoder

from rae_hf.data import ImageCollator
from rae_hf.probe import ComponentSpec, DatasetCheck, FeatureCache, feature_description, iter_components, load_encoder
from rae_hf.probe import report as report_module
from rae_hf.probe.cache import METADATA_FILE, feature_cache_key
from rae_hf.probe.data import labeled_split, probe_eval_transform
from rae_hf.probe.features import FeatureSet, FeatureVariant, feature_variants
from rae_hf.probe.linear import linear_probe
from rae_hf.probe.report import write_results
from rae_hf.scripts import run_probe
from rae_hf.trainers.probe_config import ProbeTrainingArguments

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory) -> str:
    return save_tiny_encoder(tmp_path_factory.mktemp("encoder"))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def colour_images(count: int, seed: int, classes: int = 4) -> tuple[list[Image.Image], list[int]]:
    colours = ((220, 40, 40), (40, 200, 60), (40, 60, 220), (230, 210, 40))
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(np.clip(np.array(colours[i % classes]) + rng.integers(-40, 41, (32, 32, 3)), 0, 255)
                              .astype(np.uint8)) for i in range(count)]  # fmt: skip
    return images, [i % classes for i in range(count)]


def colour_split(count: int, seed: int, classes: int = 4) -> datasets.Dataset:
    images, labels = colour_images(count, seed, classes)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list("rgby"))})
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


# ----- feature cache ---------------------------------------------------------------------------------------------
def _arrow_file(entry: str) -> str:
    folder = os.path.join(entry, "dataset")
    return os.path.join(folder, next(name for name in sorted(os.listdir(folder)) if name.endswith(".arrow")))


def _zero_bytes(entry):
    open(_arrow_file(entry), "w").close()


def _truncate(entry):
    path = _arrow_file(entry)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _overwrite_same_size(entry):
    """A chunk rewritten in place with other bytes (same length): only the checksum can tell."""
    path = _arrow_file(entry)
    data = bytearray(open(path, "rb").read())
    data[-200:-100] = bytes(100)
    open(path, "wb").write(bytes(data))


def _bad_json(entry):
    open(os.path.join(entry, METADATA_FILE), "w").write("{not json")


def _no_metadata(entry):
    os.remove(os.path.join(entry, METADATA_FILE))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_zero_bytes, "bytes"),
        (_truncate, "bytes"),
        (_overwrite_same_size, "SHA-256"),
        (_bad_json, "not valid JSON"),
        (_no_metadata, "is missing"),
    ],
    ids=["zero-byte-arrow", "truncated-arrow", "overwritten-chunk", "bad-json", "no-metadata"],
)
def test_corrupt_cache_is_detected_named_and_reextracted(encoder_dir, tmp_path, caplog, damage, message):
    encoder = load_encoder(encoder_dir)
    split = colour_split(16, seed=0)
    spec = ComponentSpec.for_variants(feature_variants(["cls"]))
    dataset = labeled_split(split, "image", "label", probe_eval_transform(32, crop_pct=1.0))
    calls = []

    def extract():
        calls.append(1)
        loader = torch.utils.data.DataLoader(dataset, batch_size=8, collate_fn=ImageCollator())
        return iter_components(encoder, loader, spec, CPU)

    description = feature_description(encoder, spec, "t", "train", "fp", 16, "auto", torch.float16)
    check = DatasetCheck.from_labels(split["label"])
    cache = FeatureCache(str(tmp_path))
    first, _ = cache.get_or_extract(description, extract, spec.shapes(encoder), check)
    entry = os.path.join(tmp_path, feature_cache_key(description))
    damage(entry)
    with caplog.at_level(logging.WARNING, logger="rae_hf.probe.cache"):
        again, hit = cache.get_or_extract(description, extract, spec.shapes(encoder), check)
    assert not hit and len(calls) == 2
    assert "Corrupt feature cache" in caplog.text and entry in caplog.text and message in caplog.text
    assert torch.equal(again.components["cls"], first.components["cls"]) and torch.equal(again.labels, first.labels)
    third, hit = cache.get_or_extract(description, extract, spec.shapes(encoder), check)  # the rebuilt entry is good
    assert hit and len(calls) == 2 and torch.equal(third.components["cls"], first.components["cls"])


# ----- report ----------------------------------------------------------------------------------------------------
def _results(heads: list[dict], best: dict | None) -> dict:
    return {
        "mode": "linear",
        "encoder": {"name_or_path": "tiny"},
        "data": {"num_train": 8, "num_validation": 4, "num_classes": 2},
        "heads": heads,
        "best": best,
        "training": {"protocol": "dinov2", "solver": "sgd", "selection": "validation", "lr_scale": 1.0},
        "warnings": [{"code": "not_converged", "message": "x"}],
    }


def _head(lr: float, top1: float, diverged: bool = False) -> dict:
    return {"feature": "cls", "solver": "sgd", "base_learning_rate": lr, "learning_rate": lr, "top1": top1,
            "top5": 1.0, "train_loss": None if diverged else 0.5, "diverged": diverged}  # fmt: skip


@pytest.mark.parametrize(
    "heads",
    [
        [_head(0.1, 0.0, True), _head(1.0, 0.0, True)],  # every head diverged
        [_head(0.1, 0.0), _head(1.0, 1.0)],  # 0% and 100%: used to raise StopIteration in the plot
        [_head(0.1, 0.5)],  # one head
    ],
    ids=["all-diverged", "0-to-100", "single"],
)
def test_report_is_written_whatever_the_heads_did(tmp_path, heads):
    best = next((h for h in heads if not h["diverged"] and h["top1"] == max(x["top1"] for x in heads)), None)
    paths = write_results(str(tmp_path), _results(heads, best))
    assert json.loads(open(paths["json"]).read())["heads"] == heads
    assert "not_converged" in open(paths["markdown"]).read()
    assert Image.open(paths["plot"]).size == (960, 560)


def test_failing_plot_leaves_the_numbers(tmp_path, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("no font")

    monkeypatch.setattr(report_module, "plot_accuracy_vs_lr", broken)
    with caplog.at_level(logging.WARNING, logger="rae_hf.probe.report"):
        paths = write_results(str(tmp_path), _results([_head(0.1, 0.5)], None))
    assert "plot" not in paths and "no font" in caplog.text
    assert os.path.isfile(tmp_path / "probe_results.json") and os.path.isfile(tmp_path / "probe_results.md")


# ----- data ------------------------------------------------------------------------------------------------------
def _argv(encoder_dir, output_dir, *extra) -> list[str]:
    return ["--model_name_or_path", encoder_dir, "--output_dir", str(output_dir), "--use_cpu", "true", "--report_to",
            "none", "--disable_tqdm", "true", "--per_device_eval_batch_size", "16", "--pooling", "cls",
            *extra]  # fmt: skip


def test_flat_folder_without_classes_is_a_clear_error(encoder_dir, tmp_path):
    for split in ("train", "validation"):
        os.makedirs(tmp_path / split)
        for index, image in enumerate(colour_images(4, seed=0)[0]):
            image.save(tmp_path / split / f"{index}.png")
    argv = _argv(encoder_dir, tmp_path / "out", "--train_dir", str(tmp_path / "train"), "--validation_dir",
                 str(tmp_path / "validation"))  # fmt: skip
    with pytest.raises(ValueError, match=r"images without a class: a probe needs one sub-folder per class"):
        run_probe.main(argv)


@pytest.mark.slow
def test_validation_classes_unseen_in_train_warn(encoder_dir, tmp_path):
    train = colour_split(24, seed=0, classes=3)  # r, g, b
    validation = colour_split(16, seed=1, classes=4)  # and y
    datasets.DatasetDict({"train": train, "validation": validation}).save_to_disk(tmp_path / "data")
    results = run_probe.main(_argv(encoder_dir, tmp_path / "out", "--dataset_name", str(tmp_path / "data"),
                                   "--run_knn", "false"))  # fmt: skip
    warnings = {w["code"]: w["message"] for w in results["warnings"]}
    assert "unseen_labels" in warnings and "4 validation images" in warnings["unseen_labels"]
    assert "'y'" in warnings["unseen_labels"] and results["best"]["top1"] <= 0.75
    datasets.DatasetDict({"train": train, "validation": colour_split(12, seed=1, classes=3)}).save_to_disk(
        tmp_path / "same"
    )
    clean = run_probe.main(_argv(encoder_dir, tmp_path / "clean", "--dataset_name", str(tmp_path / "same"),
                                 "--run_knn", "false"))  # fmt: skip
    assert "unseen_labels" not in {w["code"] for w in clean["warnings"]}


# ----- determinism -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", ["default", "dinov2", "mae"])
def test_identical_seeded_runs_give_identical_accuracies(protocol):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(300, 1, 8, generator=generator)
    labels = (features[:, 0, :2].sum(1) > 0).long() + (features[:, 0, 2] > 1).long()
    train = FeatureSet({"cls": features[:200]}, labels[:200])
    validation = FeatureSet({"cls": features[200:]}, labels[200:])
    args = dict(output_dir="unused", use_cpu=True, report_to="none", disable_tqdm=True, seed=5, protocol=protocol)
    if protocol != "default":
        args |= {"learning_rates": [0.01, 0.1, 1.0], "max_steps": 50, "per_device_train_batch_size": 32}
    runs = [linear_probe(train, validation, [FeatureVariant.from_name("cls")], {"cls": 8}, 3,
                         ProbeTrainingArguments(**args)) for _ in range(2)]  # fmt: skip
    assert runs[0].rows == runs[1].rows and runs[0].best == runs[1].best
    assert torch.equal(runs[0].weight, runs[1].weight)


# ----- reruns (issue 20, point 2) --------------------------------------------------------------------------------
def _digests(folder) -> dict[str, str]:
    return {
        os.path.relpath(os.path.join(root, name), folder): hashlib.sha256(
            open(os.path.join(root, name), "rb").read()
        ).hexdigest()
        for root, _, names in os.walk(folder)
        for name in names
    }


@pytest.mark.parametrize("mode", [["--mode", "knn"], ["--mode", "linear", "--save_classifier", "false"]])
def test_refused_rerun_of_a_finished_probe_changes_nothing(encoder_dir, tmp_path, mode):
    """A finished kNN probe, or a linear probe that saved no classifier, holds only reports: a rerun without
    --overwrite_output_dir is refused before it writes anything; with it, the run is replaced."""
    datasets.DatasetDict({"train": colour_split(16, seed=0), "validation": colour_split(8, seed=1)}).save_to_disk(
        tmp_path / "data"
    )
    argv = _argv(encoder_dir, tmp_path / "out", "--dataset_name", str(tmp_path / "data"), *mode)
    run_probe.main(argv)
    before = _digests(tmp_path / "out")
    assert {"probe_results.json", "run_config.json"} <= set(before) and "model.safetensors" not in before
    with pytest.raises(FileExistsError, match=r"probe_results\.json"):
        run_probe.main([*argv, "--seed", "7"])
    assert _digests(tmp_path / "out") == before
    run_probe.main([*argv, "--seed", "7", "--overwrite_output_dir", "true"])
    config = json.loads((tmp_path / "out" / "run_config.json").read_text())
    assert config["ProbeTrainingArguments"]["seed"] == 7


def test_resume_last_into_an_empty_folder_is_an_error_and_writes_nothing(encoder_dir, tmp_path):
    argv = _argv(encoder_dir, tmp_path / "out", "--train_dir", "unused", "--mode", "lora")
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        run_probe.main([*argv, "--resume_from_checkpoint", "last"])
    assert not (tmp_path / "out").exists()
