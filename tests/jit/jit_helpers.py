"""Tiny JiT configs and models shared by the JiT tests (seconds on CPU)."""

from __future__ import annotations

import torch

from rae_hf.models.jit import JiTConfig, JiTModel

TINY = dict(
    image_size=16,
    patch_size=4,
    hidden_size=32,
    num_hidden_layers=4,
    num_attention_heads=2,
    bottleneck_dim=8,
    num_classes=3,
    num_in_context_tokens=4,
    in_context_start=1,
)


def tiny_config(**overrides) -> JiTConfig:
    return JiTConfig(**{**TINY, **overrides})


@torch.no_grad()
def randomize(model: JiTModel, seed: int = 0, std: float = 0.05) -> JiTModel:
    """Give the zero-initialized layers (adaLN, final linear) random values so outputs are not trivially zero."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if name != "pos_embed":
            param.add_(torch.randn(param.shape, generator=generator) * std)
    return model


def tiny_model(seed: int = 0, random_output: bool = True, **overrides) -> JiTModel:
    torch.manual_seed(seed)
    model = JiTModel(tiny_config(**overrides)).eval()
    return randomize(model, seed) if random_output else model
