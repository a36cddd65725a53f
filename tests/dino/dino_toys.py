"""Tiny DINO models, multi-crop toy data and training arguments shared by the DINO tests."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from transformers import Dinov2Config

from rae_hf.data.multicrop import MultiCropTransform, multicrop_spec
from rae_hf.models.dino import DinoConfig, DinoModel
from rae_hf.trainers.dino_config import DinoTrainingArguments


def tiny_dino(seed: int = 0, **overrides) -> DinoModel:
    """2-block DINOv2 (width 32, patch 4) at 32 px with a 64-prototype head."""
    torch.manual_seed(seed)
    backbone = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        patch_size=4,
        image_size=32,
        drop_path_rate=0.1,
        layerscale_value=1e-5,
    )
    values = dict(backbone_config=backbone, image_size=32, head_out_dim=64, head_hidden_dim=32, head_bottleneck_dim=16)
    values.update(overrides)
    return DinoModel(DinoConfig(**values))


class ToyMultiCrop(Dataset):
    """Random-noise 40 px images turned into 2 global 32 px + `num_local` 16 px views."""

    def __init__(self, count: int = 16, num_local: int = 2):
        rng = np.random.default_rng(0)
        self.images = [Image.fromarray((rng.random((40, 40, 3)) * 255).astype("uint8")) for _ in range(count)]
        self.transform = MultiCropTransform(multicrop_spec("cifar", num_local_crops=num_local))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return {"pixel_values": self.transform(self.images[index])}


def dino_args(output_dir, **overrides) -> DinoTrainingArguments:
    """CPU arguments: 4-image batches, schedules of 2-step epochs so every warm-up ends within a few steps."""
    values = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=4,
        max_steps=4,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
        epoch_length=2,
        warmup_epochs=1,
        warmup_teacher_temperature_epochs=1,
        log_csv=False,
    )
    values.update(overrides)
    return DinoTrainingArguments(**values)
