"""Image preprocessing transforms (torchvision v2) shared by training and evaluation."""

from __future__ import annotations

import torch
from torchvision.transforms import v2

__all__ = ["build_image_transform", "default_resize_size"]


def default_resize_size(image_size: int) -> int:
    """Shorter-side resize used before the random train crop: 1.5x the crop (384 for 256, as in RAE)."""
    return round(image_size * 1.5)


def build_image_transform(
    image_size: int, resize_size: int | None = None, train: bool = True, hflip: bool = False
) -> v2.Compose:
    """Build the RGB PIL image -> float32 ``[3, image_size, image_size]`` tensor in [0, 1] transform.

    Train: bicubic antialiased resize of the shorter side to ``resize_size`` (default
    :func:`default_resize_size`), random crop, optional horizontal flip. Eval: bicubic resize of the
    shorter side to ``image_size`` and center crop (``resize_size`` and ``hflip`` are ignored).
    Random ops draw from torch's global RNG, so checkpointed RNG states make resumption exact.
    """
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    bicubic = v2.InterpolationMode.BICUBIC
    if train:
        resize_size = default_resize_size(image_size) if resize_size is None else resize_size
        if resize_size < image_size:
            raise ValueError(f"resize_size ({resize_size}) must be >= image_size ({image_size})")
        ops: list[v2.Transform] = [
            v2.Resize(resize_size, interpolation=bicubic, antialias=True),
            v2.RandomCrop(image_size),
        ]
        if hflip:
            ops.append(v2.RandomHorizontalFlip())
    else:
        ops = [v2.Resize(image_size, interpolation=bicubic, antialias=True), v2.CenterCrop(image_size)]
    return v2.Compose([*ops, v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
