"""Tiny ViT variants for the ViT / pruning tests (CPU, milliseconds)."""

from __future__ import annotations

import torch

from rae_hf.models.vit import ViTVariantConfig, ViTVariantForImageClassification

TINY = dict(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, head_dim=8,
            intermediate_size=48, num_labels=5)  # fmt: skip


def tiny_config(**overrides) -> ViTVariantConfig:
    return ViTVariantConfig(**{**TINY, **overrides})


def tiny_classifier(seed: int = 0, std: float = 0.2, **overrides) -> ViTVariantForImageClassification:
    """A tiny classifier with large random weights (every bias nonzero), in eval mode."""
    torch.manual_seed(seed)
    model = ViTVariantForImageClassification(tiny_config(**overrides))
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, std)
    return model.eval()


def tiny_batch(size: int = 6, seed: int = 0, image_size: int = 16, num_labels: int = 5) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "pixel_values": torch.randn(size, 3, image_size, image_size, generator=generator),
        "labels": torch.randint(0, num_labels, (size,), generator=generator),
    }
