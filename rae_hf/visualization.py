"""Image grids a person looks at: originals next to reconstructions."""

from __future__ import annotations

import torch
from torchvision.utils import make_grid, save_image

from .data.transforms import resize_images


def reconstruction_grid(originals: torch.Tensor, reconstructions: torch.Tensor, columns: int = 8) -> torch.Tensor:
    """`[3, H', W']` grid in [0, 1]: rows alternate originals (resized to the reconstructions' size by
    `resize_images`) and their reconstructions, `columns` images wide."""
    originals = resize_images(originals.float(), reconstructions.shape[-2:])
    rows = []
    for start in range(0, originals.shape[0], columns):
        rows += [originals[start : start + columns], reconstructions[start : start + columns]]
    images = torch.cat(rows).float().clamp(0, 1).cpu()
    return make_grid(images, nrow=min(columns, originals.shape[0]), padding=2, pad_value=1.0)


def save_reconstruction_grid(
    originals: torch.Tensor, reconstructions: torch.Tensor, path: str, columns: int = 8
) -> str:
    """Write `reconstruction_grid(...)` as a PNG and return its path."""
    save_image(reconstruction_grid(originals, reconstructions, columns), path)
    return path
