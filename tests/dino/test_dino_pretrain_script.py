"""run_dino_pretrain.py end to end on toy textures: data check, training, export, probe and RAE encoder use."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoImageProcessor, AutoModel

import run_dino_pretrain  # noqa: F401  (the documented entry point imports)
from rae_hf.cli import parse_args
from rae_hf.data import DataArguments
from rae_hf.data.multicrop import multicrop_spec
from rae_hf.models.rae import RAEModel
from rae_hf.scripts.run_dino_pretrain import (
    DinoModelArguments,
    MultiCropArguments,
    check_data_pipeline,
    crop_spec,
    main,
    make_toy_textures,
)
from rae_hf.trainers.dino_config import DinoTrainingArguments

ROOT = Path(__file__).resolve().parents[2]

TINY = [
    "--backbone_size", "tiny", "--hidden_size", "32", "--num_hidden_layers", "2", "--num_attention_heads", "2",
    "--patch_size", "4", "--head_out_dim", "64", "--head_hidden_dim", "32", "--head_bottleneck_dim", "16",
    "--multicrop_preset", "cifar", "--num_local_crops", "2", "--per_device_train_batch_size", "8",
    "--report_to", "none", "--use_cpu", "true", "--save_strategy", "no", "--disable_tqdm", "true", "--seed", "0",
]  # fmt: skip


@pytest.fixture(scope="module")
def textures(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("textures")
    make_toy_textures(str(root), per_class=12, validation_per_class=6, size=36)
    return str(root)


def _data(root: str) -> list[str]:
    return ["--train_dir", f"{root}/train", "--validation_dir", f"{root}/validation"]


def test_check_data_pipeline_prints_views(textures, tmp_path, capsys) -> None:
    result = main([*TINY, *_data(textures), "--output_dir", str(tmp_path), "--check_data_pipeline", "true"])
    assert result == {"check_passed": True}
    out = capsys.readouterr().out
    assert "4 views per image (expected 4)" in out and "mask ratios" in out
    assert (tmp_path / "crops.png").is_file()


def test_check_data_pipeline_fails_on_non_finite_views() -> None:
    spec = multicrop_spec("cifar", num_local_crops=1)
    bad = {"global_crops": torch.full((4, 3, 32, 32), float("nan")), "local_crops": torch.zeros(2, 3, 16, 16)}
    assert not check_data_pipeline([bad], spec, 1)
    wrong_count = {"global_crops": torch.zeros(4, 3, 32, 32), "local_crops": torch.zeros(6, 3, 16, 16)}
    assert not check_data_pipeline([wrong_count], spec, 1)


@pytest.mark.slow
def test_pretrain_exports_a_backbone_for_probe_and_rae(textures, tmp_path) -> None:
    output = tmp_path / "run"
    args = [*TINY, *_data(textures), "--output_dir", str(output), "--max_steps", "3", "--epoch_length", "1"]
    args += ["--knn_train_dir", f"{textures}/train", "--knn_eval_dir", f"{textures}/validation"]
    args += ["--probe_before_after", "true", "--logging_steps", "1"]
    metrics = main(args)
    assert 0.0 <= metrics["knn_top1_before"] <= 1.0 and 0.0 <= metrics["knn_top1_after"] <= 1.0
    backbone = AutoModel.from_pretrained(output / "backbone")
    processor = AutoImageProcessor.from_pretrained(output / "backbone")
    assert type(backbone).__name__ == "Dinov2Model" and processor.crop_size == {"height": 32, "width": 32}
    assert (output / "crops.png").is_file() and (output / "probe" / "after" / "probe_results.json").is_file()
    # the exported teacher is the trained DinoModel's teacher
    trained = AutoModel.from_pretrained(output)
    for name, value in backbone.state_dict().items():
        torch.testing.assert_close(value, trained.teacher["backbone"].state_dict()[name], msg=name)
    # ... and serves as a frozen RAE encoder whose decoder trains
    rae = RAEModel.from_encoder_pretrained(
        str(output / "backbone"),
        decoder_hidden_size=32,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=64,
        decoder_patch_size=4,
    )
    rae.train()
    images = torch.rand(2, 3, 32, 32)
    loss = (rae(images).reconstruction - images).abs().mean()
    loss.backward()
    assert all(p.grad is None for p in rae.encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in rae.decoder.parameters())


@pytest.mark.parametrize("recipe", sorted((ROOT / "recipes" / "dino").glob("*.yaml")), ids=lambda p: p.stem)
def test_recipes_parse(recipe, tmp_path) -> None:
    model_args, crop_args, _, training_args = parse_args(
        (DinoModelArguments, MultiCropArguments, DataArguments, DinoTrainingArguments),
        [str(recipe), "--output_dir", str(tmp_path), "--bf16", "false", "--use_cpu", "true"],
    )
    spec = crop_spec(crop_args, training_args.method)
    assert spec.global_size % model_args.patch_size == 0


def test_imagenet_recipe_has_the_official_dinov2_settings(tmp_path) -> None:
    model_args, crop_args, _, args = parse_args(
        (DinoModelArguments, MultiCropArguments, DataArguments, DinoTrainingArguments),
        [str(ROOT / "recipes/dino/vits16_imagenet1k.yaml"), "--output_dir", str(tmp_path), "--bf16", "false"],
    )
    spec = crop_spec(crop_args, args.method)
    assert (spec.global_scale, spec.local_scale, spec.num_local_crops) == ((0.32, 1.0), (0.05, 0.32), 8)
    assert (args.max_steps, args.epoch_length, args.warmup_epochs) == (125000, 1250, 10)
    assert (args.learning_rate, args.weight_decay, args.weight_decay_end) == (0.004, 0.04, 0.4)
    assert (args.teacher_momentum, args.warmup_teacher_temperature_epochs, args.max_grad_norm) == (0.992, 30, 3.0)
    assert (model_args.hidden_size or 384, model_args.patch_size, model_args.head_out_dim) == (384, 16, 65536)
