"""PruneTrainer (exact mid-round resume with masks restored) and run_prune.py end to end on generated images."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from transformers import AutoModelForImageClassification
from vit_helpers import tiny_batch, tiny_classifier

import run_prune
from rae_hf.cli import parse_args
from rae_hf.data import image_transform
from rae_hf.models.vit import VIT_PRESETS
from rae_hf.prune import MaskSet, RoundMasks, RSSTCallback, dense_masks, global_magnitude_masks, refill_masks
from rae_hf.prune import unit_groups as groups_of
from rae_hf.prune.arguments import PruneDataArguments, PruneModelArguments
from rae_hf.prune.build import classification_presets
from rae_hf.tools.synthetic_shapes import shape_splits
from rae_hf.trainers.prune_config import PruneTrainingArguments
from rae_hf.trainers.prune_trainer import PruneTrainer

ROOT = Path(__file__).resolve().parents[2]


def rsst_round_masks(model) -> RoundMasks:
    params = dict(model.named_parameters())
    groups = groups_of(model)
    magnitude = global_magnitude_masks(params, dense_masks(model, [m.name for g in groups for m in g.weights]), 0.3)
    refilled, _ = refill_masks(model, groups, magnitude, 0.0, "remain")
    weights_r = MaskSet({n: m for n, m in refilled.items() if n in magnitude})
    return RoundMasks(magnitude.union(weights_r), magnitude.minus(weights_r), refilled, magnitude)


def train(tmp_path, masks: RoundMasks, resume: str | None = None):
    model = tiny_classifier(std=0.05)
    data = [{k: v[i] for k, v in tiny_batch(24, seed=1).items()} for i in range(24)]
    args = PruneTrainingArguments(
        output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=4, save_strategy="steps", save_steps=3,
        learning_rate=1e-2, warmup_steps=0, logging_steps=1, report_to="none", use_cpu=True, seed=0,
        dataloader_num_workers=0, disable_tqdm=True, prune_method="rsst", overwrite_output_dir=resume is None,
    )  # fmt: skip
    callback = RSSTCallback(masks, criterion="remain", reg_curve="x", reg_granularity=0.01)
    trainer = PruneTrainer(model=model, args=args, train_dataset=data, eval_dataset=data[:8], pruning=callback,
                           num_classes=5)  # fmt: skip
    trainer.train(resume_from_checkpoint=resume)
    return model, trainer


def test_round_resumes_exactly_mid_round_with_masks_restored(tmp_path):
    masks = rsst_round_masks(tiny_classifier(std=0.05))
    full, trainer = train(tmp_path / "a", masks)
    assert (tmp_path / "a" / "checkpoint-3" / "prune_masks.safetensors").is_file()
    for name, param in full.named_parameters():
        if name in masks.hard:  # R hard-applied at the end of the round
            assert not param[~masks.hard[name]].any(), name
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["eval_top1"] <= metrics["eval_top5"] <= 1.0
    # resume from step 3 with a callback that starts without masks: they must come back from the checkpoint
    import shutil

    shutil.copytree(tmp_path / "a" / "checkpoint-3", tmp_path / "b" / "checkpoint-3")
    resumed, trainer_b = train(tmp_path / "b", RoundMasks(MaskSet()), resume=str(tmp_path / "b" / "checkpoint-3"))
    assert set(trainer_b.pruning.masks.train.masks) == set(masks.train.masks)
    for (name, a), (_, b) in zip(full.named_parameters(), resumed.named_parameters(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.slow
def test_run_prune_two_rounds_then_extend_by_a_round(tmp_path):
    tiny_classifier(num_labels=4).save_pretrained(tmp_path / "init")
    argv = [
        "--dataset_name", "synthetic", "--synthetic_train_size", "32", "--synthetic_validation_size", "16",
        "--synthetic_image_size", "16", "--model_name_or_path", str(tmp_path / "init"), "--prune_method", "refill",
        "--criterion", "saliency", "--prune_rounds", "2", "--prune_rate", "0.3", "--max_steps", "2",
        "--per_device_train_batch_size", "16", "--learning_rate", "1e-3", "--output_dir", str(tmp_path / "run"),
        "--report_to", "none", "--use_cpu", "true", "--save_strategy", "no", "--disable_tqdm", "true",
        "--dataloader_num_workers", "0", "--auto", "y",
    ]  # fmt: skip
    rows = run_prune.main(argv)
    assert [r["round"] for r in rows] == [0, 1]
    assert rows[0]["weight_sparsity"] == 0.0 and rows[1]["weight_sparsity"] > 0.2
    assert rows[1]["params_shrunk"] < rows[0]["params_shrunk"]
    assert rows[1]["shrink_max_logit_diff"] <= 1e-5
    for name in ("rounds.jsonl", "rounds.csv", "rounds.md", "accuracy_vs_sparsity.png", "rewind.safetensors"):
        assert (tmp_path / "run" / name).is_file(), name
    assert (tmp_path / "run" / "final" / "preprocessor_config.json").is_file()
    small = AutoModelForImageClassification.from_pretrained(tmp_path / "run" / "final")
    assert sum(p.numel() for p in small.parameters()) == rows[1]["params_shrunk"]
    with pytest.raises(FileExistsError, match="resume_from_checkpoint"):
        run_prune.main(argv)
    rows = run_prune.main([*argv[:argv.index("--prune_rounds") + 1], "3", *argv[argv.index("--prune_rounds") + 2:],
                           "--resume_from_checkpoint", "last"])  # fmt: skip
    assert [r["round"] for r in rows] == [0, 1, 2] and rows[2]["weight_sparsity"] > rows[1]["weight_sparsity"]
    lines = (tmp_path / "run" / "rounds.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["round"] == 2


@pytest.mark.parametrize("recipe", sorted(p.name for p in (ROOT / "recipes" / "prune").glob("*.yaml")))
def test_recipes_parse(recipe):
    model_args, data_args, training_args = parse_args(
        (PruneModelArguments, PruneDataArguments, PruneTrainingArguments),
        [str(ROOT / "recipes" / "prune" / recipe), "--bf16", "false"],
    )
    assert training_args.prune_method in ("rsst", "refill", "magnitude", "none")
    assert model_args.model_preset in VIT_PRESETS
    if recipe.startswith("cifar10_"):  # the seed's default experiment
        assert (training_args.num_train_epochs, training_args.prune_rounds, training_args.prune_rate) == (80, 16, 0.2)
        assert (training_args.reg_granularity, training_args.reg_exponent) == (1.0, 4.0)
        assert data_args.dataset_name == "uoft-cs/cifar10" and data_args.image_column_name == "img"


def test_dataset_aliases_and_cifar_transforms():
    args = PruneDataArguments(dataset_name="cifar100")
    assert (args.dataset_name, args.label_column_name, args.validation_split_name) == (
        "uoft-cs/cifar100", "fine_label", "test",
    )  # fmt: skip
    assert PruneDataArguments(dataset_name="cifar10", image_column_name="picture").image_column_name == "picture"
    assert classification_presets(32) == ("padded_crop_train", "resize")
    assert classification_presets(224) == ("probe_train", "probe_eval")
    train, evaluation = (
        image_transform(name, 32, mean=[0.5] * 3, std=[0.5] * 3) for name in classification_presets(32)
    )
    from PIL import Image

    image = Image.new("RGB", (32, 32), (255, 0, 0))
    assert train(image).shape == evaluation(image).shape == (3, 32, 32)
    assert torch.allclose(evaluation(image)[0], torch.ones(32, 32))  # (1 - 0.5) / 0.5


def test_synthetic_splits_are_balanced_deterministic_and_plain():
    splits = shape_splits(12, 8, 16, seed=3)
    assert splits["train"]["label"] == [0, 1, 2, 3] * 3 and splits["validation"]["label"] == [0, 1, 2, 3] * 2
    again = shape_splits(12, 8, 16, seed=3)
    assert [x["bytes"] for x in again["train"]["image"]] == [x["bytes"] for x in splits["train"]["image"]]
    assert not {x["bytes"] for x in splits["train"]["image"]} & {x["bytes"] for x in splits["validation"]["image"]}
    for item in splits["train"].cast_column("image", datasets.Image()):
        pixels = np.asarray(item["image"]).reshape(-1, 3)
        colours, counts = np.unique(pixels, axis=0, return_counts=True)
        assert len(colours) == 2  # a plain dark background and one bright shape
        dark, bright = colours[:, 0] < 96, colours[:, 0] >= 160  # background channels < 96, shape's >= 160
        assert colours[dark].max() < 96 and colours[bright].min() >= 160 and dark.sum() == bright.sum() == 1
        assert 0.15 < counts[bright].item() / pixels.shape[0] < 0.8  # the shape covers a large part of the image


def test_torch_num_threads_is_validated():
    with pytest.raises(ValueError, match="torch_num_threads"):
        PruneModelArguments(torch_num_threads=0)


@pytest.mark.slow
def test_quickstart_learns_and_the_pruned_round_stays_close(tmp_path):
    threads = torch.get_num_threads()
    try:
        rows = run_prune.main([str(ROOT / "recipes" / "prune" / "quickstart.yaml"), "--output_dir", str(tmp_path),
                               "--disable_tqdm", "true"])  # fmt: skip
        assert torch.get_num_threads() == 1  # the recipe's torch_num_threads
    finally:
        torch.set_num_threads(threads)
    assert [r["round"] for r in rows] == [0, 1]
    assert rows[0]["eval_top1"] >= 0.85  # chance: 0.25 (measured 0.98)
    assert rows[1]["eval_top1"] >= 0.8 and rows[1]["weight_sparsity"] > 0.2  # measured 0.95 at 27.7 % sparsity
    assert rows[1]["params_shrunk"] < rows[0]["params_shrunk"]
