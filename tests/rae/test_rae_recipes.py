"""Recipes (`recipes/rae/*.yaml`) parse into run_rae.py's arguments with the paper's values, and the Accelerate
configs (`accelerate_configs/*.yaml`) load with the installed accelerate."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.utils import DistributedType

from rae_hf.cli import parse_args
from rae_hf.data import DataArguments
from rae_hf.scripts.run_rae import ModelArguments
from rae_hf.trainers.rae_config import RAETrainingArguments

ROOT = Path(__file__).resolve().parents[2]

RECIPES = sorted((ROOT / "recipes" / "rae").glob("*.yaml"))
ACCELERATE_CONFIGS = sorted((ROOT / "accelerate_configs").glob("*.yaml"))
DATACLASSES = (ModelArguments, DataArguments, RAETrainingArguments)
GLOBAL_BATCH = 512
GPUS_LINE = re.compile(r"^#\s*gpus:\s*(\d+)\s*$", re.MULTILINE)

# ImageNet reproductions of the paper: recipe -> (encoder, encoder input size, decoder preset)
PAPER_RECIPES = {
    "dinov2_b_vitxl_imagenet.yaml": ("facebook/dinov2-with-registers-base", 224, "ViT-XL"),
    "dinov2_b_vitxl_imagenet_8gpu.yaml": ("facebook/dinov2-with-registers-base", 224, "ViT-XL"),
    "siglip2_b_vitxl_imagenet.yaml": ("google/siglip2-base-patch16-256", 256, "ViT-XL"),
    "mae_b_vitxl_imagenet.yaml": ("facebook/vit-mae-base", 256, "ViT-XL"),
    "dinov2_b_vitb_1gpu.yaml": ("facebook/dinov2-with-registers-base", 224, "ViT-B"),
}


def _parse(path: Path, tmp_path: Path, *overrides: str) -> tuple:
    """Parse a recipe like `run_rae.py` does; bf16 is switched off because TrainingArguments rejects it on CPU."""
    argv = [str(path), "--output_dir", str(tmp_path), "--bf16", "false", *overrides]
    return parse_args(DATACLASSES, argv)


def test_every_recipe_is_covered() -> None:
    names = {path.name for path in RECIPES}
    assert set(PAPER_RECIPES) | {"quickstart.yaml"} <= names
    assert len(ACCELERATE_CONFIGS) >= 6


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_parses(path: Path, tmp_path: Path) -> None:
    model_args, data_args, training_args = _parse(path, tmp_path)
    assert model_args.model_name_or_path
    assert (data_args.dataset_name is None) != (data_args.train_dir is None)
    assert training_args.output_dir == str(tmp_path)
    assert training_args.per_device_train_batch_size > 0


@pytest.mark.parametrize("name", sorted(PAPER_RECIPES))
def test_paper_recipe_values(name: str, tmp_path: Path) -> None:
    path = ROOT / "recipes" / "rae" / name
    text = path.read_text()
    raw = yaml.safe_load(text)
    assert raw["bf16"] is True, "paper recipes train in bf16 (overridden only for this CPU test)"
    model_args, data_args, args = _parse(path, tmp_path)

    encoder, input_size, decoder = PAPER_RECIPES[name]
    assert model_args.model_name_or_path == encoder
    assert model_args.encoder_input_size == input_size
    assert model_args.decoder_preset == decoder
    assert model_args.decoder_patch_size == 16
    assert model_args.noise_tau == 0.8
    assert model_args.noise_distribution == "uniform"
    assert data_args.dataset_name == "ILSVRC/imagenet-1k"
    assert data_args.image_size == 256
    assert args.dataloader_num_workers == 8

    assert args.num_train_epochs == 16
    assert args.learning_rate == pytest.approx(2e-4)
    assert (args.adam_beta1, args.adam_beta2) == (pytest.approx(0.9), pytest.approx(0.95))
    assert args.weight_decay == 0.0
    assert args.max_grad_norm == 0.0
    assert args.lr_scheduler_type == "cosine_with_min_lr"
    assert args.lr_scheduler_kwargs == {"min_lr": pytest.approx(2e-5)}
    assert args.warmup_steps == pytest.approx(1 / 16)  # one epoch of sixteen
    assert args.ema_decay == pytest.approx(0.9978)

    assert args.l1_weight == 1.0
    assert args.perceptual_weight == 1.0
    assert args.lpips_start == 0
    assert args.lpips_pretrained_backbone is True
    assert args.discriminator_name_or_path == "facebook/dino-vits8"
    assert args.disc_weight == pytest.approx(0.75)
    assert args.disc_start == 8
    assert args.disc_upd_start == 6
    assert args.disc_updates == 1
    assert args.max_d_weight == pytest.approx(1e4)
    assert args.gan_schedule_unit == "epoch"
    assert args.disc_learning_rate == pytest.approx(2e-4)
    assert (args.disc_adam_beta1, args.disc_adam_beta2) == (pytest.approx(0.9), pytest.approx(0.95))
    assert args.report_to == ["wandb"]
    assert args.ddp_find_unused_parameters is False

    match = GPUS_LINE.search(text)
    assert match, f"{name} needs a '# gpus: N' comment line"
    gpus = int(match.group(1))
    global_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * gpus
    assert global_batch == GLOBAL_BATCH, f"{name}: {global_batch} images per optimizer step on {gpus} GPU(s)"


def test_command_line_overrides_the_file(tmp_path: Path) -> None:
    path = ROOT / "recipes" / "rae" / "dinov2_b_vitxl_imagenet.yaml"
    model_args, data_args, args = _parse(
        path, tmp_path, "--learning_rate", "1e-4", "--decoder_preset", "ViT-L", "--image_size", "128"
    )
    assert args.learning_rate == pytest.approx(1e-4)
    assert model_args.decoder_preset == "ViT-L"
    assert data_args.image_size == 128
    assert args.adam_beta2 == pytest.approx(0.95)  # values not overridden still come from the file


def test_unknown_key_is_rejected_by_name(tmp_path: Path) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("model_name_or_path: x\ndataset_name: y\nnot_a_real_argument: 3\n")
    with pytest.raises(ValueError, match="not_a_real_argument"):
        parse_args(DATACLASSES, [str(recipe), "--output_dir", str(tmp_path)])


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_accelerate_config_loads(path: Path) -> None:
    config = load_config_from_file(str(path))
    assert isinstance(config, ClusterConfig)
    assert ClusterConfig.from_yaml_file(str(path)).to_dict() == config.to_dict()
    assert config.num_processes >= 1


def test_accelerate_config_values() -> None:
    def load(name: str) -> ClusterConfig:
        return load_config_from_file(str(ROOT / "accelerate_configs" / name))

    single = load("single_gpu.yaml")
    assert (single.distributed_type, single.num_processes, single.mixed_precision) == (DistributedType.NO, 1, "bf16")
    multi = load("multi_gpu.yaml")
    assert (multi.distributed_type, multi.num_processes, multi.mixed_precision) == (
        DistributedType.MULTI_GPU,
        8,
        "bf16",
    )
    node = load("multi_node.yaml")
    assert (node.num_machines, node.num_processes, node.main_process_port) == (2, 16, 29500)
    fsdp = load("fsdp.yaml")
    assert fsdp.distributed_type == DistributedType.FSDP
    assert fsdp.fsdp_config["fsdp_version"] == 2 and fsdp.fsdp_config["fsdp_reshard_after_forward"] is True
    cpu = load("cpu.yaml")
    assert (cpu.distributed_type, cpu.num_processes, cpu.use_cpu) == (DistributedType.NO, 1, True)
    # MULTI_GPU selects accelerate's torchrun launcher, which also starts CPU processes (see the file's comments)
    ddp = load("cpu_ddp.yaml")
    assert (ddp.num_processes, ddp.use_cpu, ddp.mixed_precision) == (2, True, "no")
