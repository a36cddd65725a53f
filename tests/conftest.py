"""Shared fixtures: tiny RAE models, discriminators and image datasets built on the fly (no network)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
from torch.utils.data import Dataset
from transformers import Dinov2WithRegistersConfig, ViTConfig, ViTModel

from rae_hf.models.rae import RAEConfig, RAEModel
from rae_hf.models.rae.discriminator import DinoDiscriminator


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
