"""Shared fixtures: tiny RAE models, discriminators and image datasets built on the fly (no network)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
from torch.utils.data import Dataset
from transformers import Dinov2WithRegistersConfig, ViTConfig, ViTModel

from rae_hf.models.rae import RAEConfig, RAEModel
from rae_hf.models.rae.discriminator import DinoDiscriminator
from rae_hf.trainers.rae_config import RAETrainingArguments

ROOT = Path(__file__).resolve().parents[1]


def make_args(output_dir, **overrides) -> RAETrainingArguments:
    """Tiny CPU training arguments: step-based GAN schedule that reaches every phase within a few steps."""
    values = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=4,
        max_steps=4,
        learning_rate=1e-3,
        warmup_steps=0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
        gan_schedule_unit="step",
        lpips_start=0,
        disc_upd_start=1,
        disc_start=2,
        disc_learning_rate=1e-3,
        ema_decay=0.9,
        disable_tqdm=True,
    )
    values.update(overrides)
    return RAETrainingArguments(**values)


def cpu_training_args(args_class: type, output_dir, **values):
    """`args_class` (a trainer's arguments) for tiny CPU tests: no saving, reporting, workers, progress bars or CSV
    log, seed 0, a log every step; `values` add to or replace these."""
    quiet = dict(logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, seed=0)
    quiet |= dict(dataloader_num_workers=0, disable_tqdm=True, log_csv=False)
    return args_class(output_dir=str(output_dir), **{**quiet, **values})


def launch_two_cpu_processes(script: str, *script_args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`accelerate launch` with accelerate_configs/cpu_ddp.yaml (2 gloo processes) on a free port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ROOT / "accelerate_configs" / "cpu_ddp.yaml"),
        "--main_process_port",
        str(port),
        str(ROOT / "tests" / script),
        *script_args,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def tiny_rae_config(**overrides) -> RAEConfig:
    """DINOv2-with-registers encoder (patch 8 at 32 px -> 4x4 tokens), 2-layer decoder (patch 8 -> 32 px out)."""
    encoder = Dinov2WithRegistersConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_register_tokens=4,
    )
    kwargs = dict(
        encoder_config=encoder,
        encoder_input_size=32,
        decoder_hidden_size=32,
        decoder_num_hidden_layers=2,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=64,
        decoder_patch_size=8,
    )
    kwargs.update(overrides)
    return RAEConfig(**kwargs)


def tiny_rae(seed: int = 0, **overrides) -> RAEModel:
    torch.manual_seed(seed)
    return RAEModel(tiny_rae_config(**overrides))


def tiny_discriminator(seed: int = 0) -> DinoDiscriminator:
    """12-block ViT (hook blocks 2, 5, 8, 11 like DINO ViT-S/8) of width 16 at 16 px."""
    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=16,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=12,
        num_attention_heads=2,
        intermediate_size=32,
    )
    return DinoDiscriminator(ViTModel(config, add_pooling_layer=False), input_size=16)


class SyntheticImages(Dataset):
    """Smooth random images in [0, 1] (`{"pixel_values": [3, size, size]}`), fixed by the seed."""

    def __init__(self, count: int = 8, size: int = 32, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        coarse = torch.rand(count, 3, 4, 4, generator=generator)
        self.images = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> dict:
        return {"pixel_values": self.images[index]}


@pytest.fixture
def synthetic_images() -> SyntheticImages:
    return SyntheticImages()
