"""In-memory image-classification splits of generated shapes: the offline data of the pruning quickstart."""

from __future__ import annotations

import random

import datasets
from PIL import Image, ImageDraw

from .make_dummy_dataset import CLASS_NAMES, _draw_shape

__all__ = ["shape_image", "shape_splits"]


def shape_splits(train_size: int, validation_size: int, image_size: int, seed: int) -> datasets.DatasetDict:
    """Train/validation splits of generated shape images (4 classes), images left undecoded as `load_image_splits`.

    An easy but honest task for a ViT trained from scratch in a CPU minute: the class is the shape alone (circle,
    square, triangle, cross: `make_dummy_dataset`'s classes), filled in a random bright colour on a plain random dark
    background, with random size (0.3-0.42 of the side) and position; classes balanced, the validation images drawn
    from their own seed. (`make_dummy_dataset`'s shapes on colour gradients stay at chance there.)"""
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(CLASS_NAMES))})
    splits = {}
    for offset, (name, size) in enumerate((("train", train_size), ("validation", validation_size))):
        rng = random.Random(seed * 2 + offset)
        labels = [index % len(CLASS_NAMES) for index in range(size)]
        images = [shape_image(rng, image_size, CLASS_NAMES[label]) for label in labels]
        split = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
        splits[name] = split.cast_column("image", datasets.Image(decode=False))
    return datasets.DatasetDict(splits)


def shape_image(rng: random.Random, size: int, shape: str) -> Image.Image:
    """One `size` x `size` image of `shape` (a `CLASS_NAMES` entry) for `shape_splits`."""
    image = Image.new("RGB", (size, size), tuple(rng.randrange(96) for _ in range(3)))
    radius = rng.uniform(0.3, 0.42) * size
    center = (rng.uniform(radius, size - radius), rng.uniform(radius, size - radius))
    _draw_shape(ImageDraw.Draw(image), shape, *center, radius, tuple(rng.randrange(160, 256) for _ in range(3)))
    return image
