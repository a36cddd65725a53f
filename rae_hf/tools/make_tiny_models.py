"""Write tiny random-weight checkpoints for offline runs: an encoder (DINOv2 with registers), a DINO-style ViT
discriminator backbone (each with its config, the encoder with its image-processor config) and random FID
Inception-v3 weights (so the rFID pipeline runs without network; its scores are not real FIDs).

    python -m rae_hf.tools.make_tiny_models --output_dir runs/tiny-models
    # -> runs/tiny-models/encoder, runs/tiny-models/discriminator, runs/tiny-models/inception-random.safetensors
"""

from __future__ import annotations

import argparse
import os

import torch
from transformers import BitImageProcessor, Dinov2WithRegistersConfig, Dinov2WithRegistersModel, ViTConfig, ViTModel
from transformers.utils.constants import IMAGENET_DEFAULT_MEAN as IMAGENET_MEAN
from transformers.utils.constants import IMAGENET_DEFAULT_STD as IMAGENET_STD

from rae_hf.metrics import save_random_inception_weights


def make_tiny_encoder(
    output_dir: str,
    image_size: int = 64,
    patch_size: int = 8,
    hidden_size: int = 64,
    num_layers: int = 4,
    seed: int = 0,
) -> str:
    """A DINOv2-with-registers encoder small enough for CPU tests (4 registers, like the real one)."""
    torch.manual_seed(seed)
    config = Dinov2WithRegistersConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=max(1, hidden_size // 32),
        intermediate_size=hidden_size * 4,
        num_register_tokens=4,
    )
    Dinov2WithRegistersModel(config).save_pretrained(output_dir)
    BitImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    ).save_pretrained(output_dir)
    return output_dir


def make_tiny_discriminator(
    output_dir: str, image_size: int = 32, patch_size: int = 8, hidden_size: int = 32, seed: int = 0
) -> str:
    """A 12-block ViT like DINO ViT-S/8 (so the default hook blocks 2, 5, 8, 11 apply), but tiny."""
    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=hidden_size,
        num_hidden_layers=12,
        num_attention_heads=2,
        intermediate_size=hidden_size * 2,
    )
    ViTModel(config, add_pooling_layer=False).save_pretrained(output_dir)
    return output_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--image_size", type=int, default=64, help="Encoder input size.")
    args = parser.parse_args()
    encoder = make_tiny_encoder(os.path.join(args.output_dir, "encoder"), image_size=args.image_size)
    discriminator = make_tiny_discriminator(os.path.join(args.output_dir, "discriminator"))
    inception = save_random_inception_weights(os.path.join(args.output_dir, "inception-random.safetensors"))
    print(f"Wrote {encoder}, {discriminator} and {inception}")


if __name__ == "__main__":
    main()
