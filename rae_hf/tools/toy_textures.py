"""The toy dataset of DINO's quickstart: two grey-level texture classes written as an image folder."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

__all__ = ["make_toy_textures"]


def make_toy_textures(root: str, per_class: int = 160, validation_per_class: int = 100, size: int = 40) -> None:
    """Two grey-level texture classes as an image folder (`train/`, `validation/`): binary stripes and binary dot
    grids, each horizontal or vertical, of random frequency, phase, grey levels and polarity (seeded; written once).

    Everything that differs between images of a class is something the DINO augmentations change between the views
    of one image (brightness and contrast by the colour jitter, position and phase by the crops), so the texture is
    what the views share. Per-image colours are not: the colour jitter keeps most of them, DINO then matches views by
    colour, and a coloured version of this set stayed at chance (kNN 48% before, 51% after the quickstart).
    """
    if os.path.isdir(os.path.join(root, "validation")):
        return
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for split, count in (("train", per_class), ("validation", validation_per_class)):
        for label in ("stripes", "dots"):
            folder = os.path.join(root, split, label)
            os.makedirs(folder, exist_ok=True)
            for index in range(count):
                u, v = (xx, yy) if rng.random() < 0.5 else (yy, xx)
                frequency, phase = rng.uniform(3, 6), rng.uniform(0, 2 * np.pi, size=2)
                wave = np.sin(2 * np.pi * frequency * u + phase[0])
                if label == "stripes":
                    pattern = wave > 0
                else:
                    pattern = np.abs(wave * np.sin(2 * np.pi * frequency * v + phase[1])) > 0.5
                low, high = np.sort(rng.uniform(0, 1, size=2))
                if high - low < 0.3:
                    low, high = max(low - 0.15, 0.0), min(high + 0.15, 1.0)
                foreground, background = (high, low) if rng.random() < 0.5 else (low, high)
                pixels = np.where(pattern, foreground, background)[..., None].repeat(3, axis=-1)
                pixels = pixels + rng.normal(0, 0.03, pixels.shape)
                image = Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8))
                image.save(os.path.join(folder, f"{index:04d}.png"))
