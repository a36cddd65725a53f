"""run_dino_pretrain.py end to end on toy textures: data check, training, export, probe and RAE encoder use."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch
from conftest import launch_two_cpu_processes
from dino_toys import tiny_dino
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoModel

import run_dino_pretrain  # noqa: F401  (the documented entry point imports)
from rae_hf.cli import parse_args
from rae_hf.data import DataArguments
from rae_hf.data.multicrop import MultiCropTransform, check_multicrop_batches, multicrop_spec
from rae_hf.data.transforms import image_transform
from rae_hf.models.rae import RAEModel
from rae_hf.scripts.run_dino_pretrain import main
from rae_hf.tools.toy_textures import make_toy_textures
from rae_hf.trainers.dino_arguments import DinoModelArguments, MultiCropArguments
from rae_hf.trainers.dino_config import DinoTrainingArguments
from rae_hf.trainers.dino_setup import knn_loaders
from rae_hf.trainers.dino_trainer import dino_param_groups

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
    assert not check_multicrop_batches([bad], spec, 1)
    wrong_count = {"global_crops": torch.zeros(4, 3, 32, 32), "local_crops": torch.zeros(6, 3, 16, 16)}
    assert not check_multicrop_batches([wrong_count], spec, 1)


def _saved_texture_dataset(textures: str, path: Path) -> str:
    """The toy textures as a saved `DatasetDict` with CIFAR-like names (`img`, `coarse`, splits train/test)."""
    features = datasets.Features({"img": datasets.Image(), "coarse": datasets.ClassLabel(names=["dots", "stripes"])})
    splits = {}
    for split, folder in (("train", "train"), ("test", "validation")):
        files = sorted(Path(textures, folder).glob("*/*.png"))
        rows = {"img": [str(f) for f in files], "coarse": [int(f.parent.name == "stripes") for f in files]}
        splits[split] = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict(splits).save_to_disk(str(path))
    return str(path)


def _crop_args(*argv: str) -> MultiCropArguments:
    return parse_args((MultiCropArguments,), list(argv))[0]


def test_knn_monitor_reads_labelled_dataset_splits(textures, tmp_path) -> None:
    saved = _saved_texture_dataset(textures, tmp_path / "saved")
    args = _crop_args(
        "--knn_dataset_name", saved, "--knn_eval_split", "test", "--knn_image_column", "img", "--knn_max_images", "10"
    )  # fmt: skip
    train, evaluation, num_classes = knn_loaders(
        args.knn_data_arguments(), args.knn_label_column, args.knn_max_images, tiny_dino(), batch_size=32
    )
    (train_batch,), (eval_batch,) = list(train), list(evaluation)
    assert num_classes == 2 and train_batch["pixel_values"].shape == (10, 3, 32, 32)
    assert set(train_batch["labels"].tolist()) == {0, 1}  # a random subset, not the first (one-class) rows
    assert eval_batch["pixel_values"].shape[0] == 10
    # the same images through the folders give the same labels
    folders = _crop_args("--knn_train_dir", f"{textures}/train", "--knn_eval_dir", f"{textures}/validation")
    assert knn_loaders(folders.knn_data_arguments(), None, 2000, tiny_dino(), batch_size=64)[2] == 2


def test_pretrain_streams_a_dataset_and_probes_its_splits(textures, tmp_path) -> None:
    """Training streamed from a saved dataset; the kNN monitor and the before/after probe read its labelled splits."""
    saved = _saved_texture_dataset(textures, tmp_path / "saved")
    data = ["--dataset_name", saved, "--image_column_name", "img", "--validation_split_name", "test", "--streaming"]
    knn = ["--knn_dataset_name", saved, "--knn_eval_split", "test", "--knn_image_column", "img"]
    output = tmp_path / "run"
    args = [*TINY, *data, "true", *knn, "--probe_before_after", "true", "--output_dir", str(output)]
    metrics = main([*args, "--max_steps", "2", "--epoch_length", "1", "--dataloader_num_workers", "0"])
    logged = (output / "logs.csv").read_text().splitlines()
    assert any(line.startswith("2,") and ",knn_top1," in line for line in logged)  # the monitor at the end
    assert 0.0 <= metrics["knn_top1_before"] <= 1.0 and (output / "crops.png").is_file()
    results = json.loads((output / "probe" / "after" / "probe_results.json").read_text())
    assert results["knn"] and (output / "backbone" / "config.json").is_file()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--knn_train_dir", "a"], "go together"),
        (["--knn_train_dir", "a", "--knn_eval_dir", "b", "--knn_dataset_name", "c"], "not both"),
        (["--probe_before_after", "true"], "--probe_before_after needs"),
        (["--knn_dataset_name", "c", "--knn_max_images", "0"], "--knn_max_images"),
    ],
)
def test_knn_arguments_are_checked_before_training(argv, message) -> None:
    with pytest.raises(ValueError, match=message):
        _crop_args(*argv)


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


def test_vit_variant_backbone_pretrains_exports_and_probes(textures, tmp_path) -> None:
    """The library's ViT variants as DINO backbones: mask token added, timm names in the lr groups, export loads."""
    output = tmp_path / "run"
    args = [*TINY, *_data(textures), "--output_dir", str(output), "--max_steps", "2", "--epoch_length", "1"]
    args += ["--backbone_type", "vit_variant", "--layerwise_decay", "0.5", "--logging_steps", "1"]
    args += ["--knn_train_dir", f"{textures}/train", "--knn_eval_dir", f"{textures}/validation"]
    metrics = main([*args, "--probe_before_after", "true"])
    assert 0.0 <= metrics["knn_top1_after"] <= 1.0
    backbone = AutoModel.from_pretrained(output / "backbone")
    assert type(backbone).__name__ == "ViTVariantModel" and backbone.mask_token is not None
    trained = AutoModel.from_pretrained(output)
    groups = dino_param_groups(trained, SimpleNamespace(layerwise_decay=0.5, patch_embed_lr_mult=0.2))
    multiplier = {id(p): group["lr_multiplier"] for group in groups for p in group["params"]}
    named = dict(trained.student["backbone"].named_parameters())
    assert multiplier[id(named["pos_embed"])] == 0.5**3 and multiplier[id(named["blocks.1.attn.qkv.weight"])] == 0.5
    assert multiplier[id(named["patch_embed.proj.weight"])] == pytest.approx(0.5**3 * 0.2)


def test_toy_textures_are_grey_so_colour_identifies_no_image(tmp_path) -> None:
    make_toy_textures(str(tmp_path), per_class=4, validation_per_class=2, size=24)
    images = sorted(tmp_path.glob("*/*/*.png"))
    assert len(images) == 12 and {p.parent.name for p in images} == {"stripes", "dots"}
    for path in images:
        pixels = np.asarray(Image.open(path), dtype=np.float64) / 255
        assert np.abs(pixels - pixels.mean(axis=-1, keepdims=True)).max() < 0.2  # channels differ by noise only
        assert pixels.max() - pixels.min() > 0.3  # the texture is visible


@pytest.mark.slow
def test_quickstart_lifts_knn_accuracy_clearly_above_the_untrained_backbone(tmp_path) -> None:
    """The issue's learning criterion, on the quickstart recipe itself (100 steps, 200 validation images, whose 95%
    intervals are about +-5 points; measured here: 68.5% before, 94.5% after)."""
    data = tmp_path / "textures"
    metrics = main(
        [
            str(ROOT / "recipes" / "dino" / "quickstart.yaml"),
            "--toy_data_dir", str(data),
            "--train_dir", f"{data}/train", "--validation_dir", f"{data}/validation",
            "--knn_train_dir", f"{data}/train", "--knn_eval_dir", f"{data}/validation",
            "--output_dir", str(tmp_path / "run"), "--disable_tqdm", "true",
        ]
    )  # fmt: skip
    before, after = metrics["knn_top1_before"], metrics["knn_top1_after"]
    assert after >= 0.8, metrics
    assert after - before >= 0.12, metrics


@pytest.mark.slow
def test_two_processes_train_like_one_process_on_the_global_batch(textures, tmp_path) -> None:
    """`accelerate launch` with 2 processes of 4 images equals 1 process of 8 images: same crops (seeded per image),
    same global batches, gradients averaged, centre all-reduced. DINO v1 losses (KoLeo is per process by design) and
    no drop path (random per process)."""
    common = [*TINY, *_data(textures), "--method", "dino", "--drop_path_rate", "0", "--max_steps", "3"]
    common += [
        "--epoch_length",
        "1",
        "--warmup_epochs",
        "0",
        "--learning_rate",
        "0.05",
        "--dataloader_num_workers",
        "0",
    ]
    two = tmp_path / "two"
    result = launch_two_cpu_processes(
        str(ROOT / "run_dino_pretrain.py"), *common, "--per_device_train_batch_size", "4", "--output_dir", str(two)
    )
    assert result.returncode == 0, result.stderr[-4000:]
    one = tmp_path / "one"
    main([*common, "--per_device_train_batch_size", "8", "--output_dir", str(one)])
    two_weights, one_weights = load_file(two / "model.safetensors"), load_file(one / "model.safetensors")
    assert two_weights.keys() == one_weights.keys()
    for name, value in one_weights.items():
        torch.testing.assert_close(two_weights[name], value, atol=2e-5, rtol=1e-4, msg=name)
    # the comparison can fail: one process on 4 images per step (another global batch) ends elsewhere
    other = tmp_path / "other"
    main([*common, "--per_device_train_batch_size", "4", "--output_dir", str(other)])
    other_weights = load_file(other / "model.safetensors")
    name = "student.backbone.encoder.layer.0.attention.attention.query.weight"
    assert (other_weights[name] - one_weights[name]).abs().max() > 1e-3


def test_bf16_autocast_trains_close_to_fp32(textures, tmp_path) -> None:
    """`--bf16 true` runs the forwards under bf16 autocast (losses in fp32): 2 steps end near the fp32 loss."""
    args = [*TINY, *_data(textures), "--max_steps", "2", "--epoch_length", "1", "--dataloader_num_workers", "0"]
    args += ["--drop_path_rate", "0", "--layerscale_value", "1.0"]
    full = main([*args, "--output_dir", str(tmp_path / "fp32")])
    half = main([*args, "--output_dir", str(tmp_path / "bf16"), "--bf16", "true"])
    assert math.isfinite(half["train_loss"]) and half["train_loss"] != full["train_loss"]
    assert half["train_loss"] == pytest.approx(full["train_loss"], rel=2e-2)


@pytest.mark.slow
def test_torch_compile_trains_like_eager(textures, tmp_path) -> None:
    """`--torch_compile true` (Trainer's flag) compiles the DinoModel; its mean loss over 2 steps equals eager's
    (no drop path: compiled code draws its random numbers differently)."""
    args = [*TINY, *_data(textures), "--max_steps", "2", "--epoch_length", "1", "--dataloader_num_workers", "0"]
    args += ["--drop_path_rate", "0", "--layerscale_value", "1.0"]  # 1e-5: near-equal CLS tokens, ill-posed KoLeo
    eager = main([*args, "--output_dir", str(tmp_path / "eager")])
    compiled = main([*args, "--output_dir", str(tmp_path / "compiled"), "--torch_compile", "true"])
    assert compiled["train_loss"] == pytest.approx(eager["train_loss"], rel=1e-4)


@pytest.mark.parametrize("recipe", sorted((ROOT / "recipes" / "dino").glob("*.yaml")), ids=lambda p: p.stem)
def test_recipes_parse(recipe, tmp_path) -> None:
    model_args, crop_args, _, training_args = parse_args(
        (DinoModelArguments, MultiCropArguments, DataArguments, DinoTrainingArguments),
        [str(recipe), "--output_dir", str(tmp_path), "--bf16", "false", "--use_cpu", "true"],
    )
    spec = crop_args.spec(training_args.method)
    assert spec.global_size % model_args.patch_size == 0


def test_imagenet_recipe_has_the_official_dinov2_settings(tmp_path) -> None:
    model_args, crop_args, _, args = parse_args(
        (DinoModelArguments, MultiCropArguments, DataArguments, DinoTrainingArguments),
        [str(ROOT / "recipes/dino/vits16_imagenet1k.yaml"), "--output_dir", str(tmp_path), "--bf16", "false"],
    )
    spec = crop_args.spec(args.method)
    assert (spec.global_scale, spec.local_scale, spec.num_local_crops) == ((0.32, 1.0), (0.05, 0.32), 8)
    assert (args.max_steps, args.epoch_length, args.warmup_epochs) == (125000, 1250, 10)
    assert (args.learning_rate, args.weight_decay, args.weight_decay_end) == (0.004, 0.04, 0.4)
    assert (args.teacher_momentum, args.warmup_teacher_temperature_epochs, args.max_grad_norm) == (0.992, 30, 3.0)
    assert (model_args.hidden_size or 384, model_args.patch_size, model_args.head_out_dim) == (384, 16, 65536)


def test_multicrop_is_a_transform_preset() -> None:
    """The script takes its views from the transform registry: `image_transform("multicrop", ...)` draws exactly the
    views of `MultiCropTransform` under the same seed, and a size that is not the global crop is refused."""
    spec = multicrop_spec("cifar", num_local_crops=2)
    image = Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8))
    torch.manual_seed(0)
    preset = image_transform("multicrop", 32, spec=spec)(image)
    torch.manual_seed(0)
    direct = MultiCropTransform(spec)(image)
    assert preset["seed"] == direct["seed"] and len(preset["views"]) == 4
    for ours, theirs in zip(preset["views"], direct["views"], strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert image_transform("multicrop", 64).spec.global_size == 64  # DINOv2 recipe at another size
    with pytest.raises(ValueError, match="differs from the global crop"):
        image_transform("multicrop", 64, spec=spec)
