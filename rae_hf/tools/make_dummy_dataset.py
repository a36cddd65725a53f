"""Write a small deterministic synthetic image dataset (shapes on gradients) for tests and smoke runs.

Usage::

    python -m rae_hf.tools.make_dummy_dataset --output_dir DIR [--num_train 64 --num_validation 16 \
        --num_test 16 --image_size 64 --format imagefolder|hf --seed 0]

``imagefolder`` writes ``DIR/{train,validation,test}/{class}/*.png``; ``hf`` writes a ``DatasetDict``
with ``image`` and ``label`` (shape class) columns via ``save_to_disk``.
"""

from __future__ import annotations

import argparse
import os
import random
from collections.abc import Sequence

import datasets
import numpy as np
from PIL import Image, ImageDraw

__all__ = ["CLASS_NAMES", "make_dummy_images", "write_dummy_dataset"]

CLASS_NAMES = ("circle", "square", "triangle", "cross")
SPLITS = ("train", "validation", "test")

Color = tuple[int, int, int]


def make_dummy_images(n: int, size: int, seed: int) -> list[tuple[Image.Image, int]]:
    """``n`` deterministic RGB ``size`` x ``size`` images, each a coloured shape on a gradient, with its class."""
    rng = random.Random(seed)
    return [_make_one(rng, size, index % len(CLASS_NAMES)) for index in range(n)]


def write_dummy_dataset(output_dir: str, split_sizes: dict[str, int], image_size: int, fmt: str, seed: int) -> None:
    """Write every split of ``split_sizes`` to ``output_dir`` in ``fmt`` (``imagefolder`` or ``hf``)."""
    if os.path.isdir(output_dir) and os.listdir(output_dir):
        raise FileExistsError(f"Output directory {output_dir!r} is not empty.")
    # Distinct seed per split, so splits never share images.
    samples = {
        split: make_dummy_images(size, image_size, seed * len(SPLITS) + SPLITS.index(split))
        for split, size in split_sizes.items()
        if size > 0  # an empty split would be unreadable by datasets.load_from_disk
    }
    if fmt == "imagefolder":
        for split, items in samples.items():
            for index, (image, label) in enumerate(items):
                class_dir = os.path.join(output_dir, split, CLASS_NAMES[label])
                os.makedirs(class_dir, exist_ok=True)
                image.save(os.path.join(class_dir, f"{split}_{index:05d}.png"))
        return
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(CLASS_NAMES))})
    dataset = datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict(
                {"image": [image for image, _ in items], "label": [label for _, label in items]}, features=features
            )
            for split, items in samples.items()
        }
    )
    dataset.save_to_disk(output_dir)


def _make_one(rng: random.Random, size: int, label: int) -> tuple[Image.Image, int]:
    """One gradient background with a shape of class ``label`` drawn on it."""
    image = _gradient(size, _random_color(rng), _random_color(rng), rng.uniform(0.0, 2.0 * np.pi))
    radius = rng.uniform(0.2, 0.35) * size
    cx = rng.uniform(radius, size - radius)
    cy = rng.uniform(radius, size - radius)
    _draw_shape(ImageDraw.Draw(image), CLASS_NAMES[label], cx, cy, radius, _random_color(rng))
    return image, label


def _random_color(rng: random.Random) -> Color:
    """A random 8-bit RGB colour."""
    return (rng.randrange(256), rng.randrange(256), rng.randrange(256))


def _gradient(size: int, start: Color, end: Color, angle: float) -> Image.Image:
    """Linear gradient from ``start`` to ``end`` along direction ``angle`` (radians)."""
    coords = np.linspace(0.0, 1.0, size)
    position = np.cos(angle) * coords[None, :] + np.sin(angle) * coords[:, None]
    weight = (position - position.min()) / max(np.ptp(position), 1e-6)
    pixels = (1.0 - weight[..., None]) * np.array(start) + weight[..., None] * np.array(end)
    return Image.fromarray(np.rint(pixels).astype(np.uint8))


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, radius: float, color: Color) -> None:
    """Draw one filled shape centred at (cx, cy)."""
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    if shape == "circle":
        draw.ellipse(box, fill=color)
    elif shape == "square":
        draw.rectangle(box, fill=color)
    elif shape == "triangle":
        draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=color)
    else:
        bar = radius / 3
        draw.rectangle((cx - bar, cy - radius, cx + bar, cy + radius), fill=color)
        draw.rectangle((cx - radius, cy - bar, cx + radius, cy + bar), fill=color)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", required=True, help="Empty or missing folder to write the dataset to.")
    parser.add_argument("--num_train", type=int, default=64, help="Number of training images.")
    parser.add_argument("--num_validation", type=int, default=16, help="Number of validation images.")
    parser.add_argument("--num_test", type=int, default=16, help="Number of test images.")
    parser.add_argument("--image_size", type=int, default=64, help="Side of the square images in pixels.")
    parser.add_argument("--format", choices=("imagefolder", "hf"), default="imagefolder", help="Output layout.")
    parser.add_argument("--seed", type=int, default=0, help="Random seed; same seed, same images.")
    args = parser.parse_args(argv)
    if min(args.num_train, args.num_validation, args.num_test) < 0 or args.image_size <= 0:
        parser.error("image counts must be >= 0 and --image_size positive")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m rae_hf.tools.make_dummy_dataset``."""
    args = _parse_args(argv)
    sizes = {"train": args.num_train, "validation": args.num_validation, "test": args.num_test}
    write_dummy_dataset(args.output_dir, sizes, args.image_size, args.format, args.seed)
    print(f"Wrote {sizes} images of {args.image_size}px ({args.format}) to {args.output_dir}")


if __name__ == "__main__":
    main()
