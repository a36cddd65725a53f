"""A tiny encoder shared by the probe tests."""

from __future__ import annotations

import torch
from transformers import Dinov2Config, Dinov2Model


def save_tiny_encoder(path) -> str:
    """Save a random 2-block DINOv2 (width 32, patch 8, seed 0) at 32 px to `path`; its path."""
    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          image_size=32, patch_size=8)  # fmt: skip
    Dinov2Model(config).save_pretrained(path)
    return str(path)
