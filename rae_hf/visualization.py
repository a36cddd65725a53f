"""Image grids a person can read: cells enlarged to a readable size, captions under cells (class names or ids),
names on the left of rows ("original" / "reconstruction"), and the one float -> uint8 conversion that both the PNG on
disk and every reporter (W&B, TensorBoard) use, so the logged pixels equal the file's."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .data.transforms import resize_images

__all__ = [
    "MIN_CELL_SIZE",
    "image_grid",
    "labelled_grid",
    "reconstruction_grid",
    "save_png",
    "save_reconstruction_grid",
    "to_uint8",
]

MIN_CELL_SIZE = 96  # px: smaller images are enlarged (nearest neighbour, integer factor) to at least this
PADDING = 4
FONT_SIZE = 14


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """`[3, H, W]` float image in [0, 1] -> `[H, W, 3]` uint8 array, rounded as `torchvision.utils.save_image`."""
    return image.detach().float().cpu().mul(255).add(0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def save_png(image: torch.Tensor, path: str) -> str:
    """Write a `[3, H, W]` image in [0, 1] as a PNG (pixels `to_uint8(image)`); returns the path."""
    Image.fromarray(to_uint8(image)).save(path, format="PNG")
    return path


def _font() -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """`text`, cut with an ellipsis so it is at most `width` px wide."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def image_grid(
    images: torch.Tensor,
    columns: int,
    captions: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    min_cell_size: int = MIN_CELL_SIZE,
) -> torch.Tensor:
    """`[3, H', W']` grid in [0, 1] on white of `images` (`[N, 3, h, w]` in [0, 1]), `columns` wide; cells smaller
    than `min_cell_size` are enlarged by an integer factor (nearest neighbour, so pixels stay visible), each
    `captions[i]` is written under image `i`, and each `row_labels[r]` left of row `r`."""
    count = images.shape[0]
    columns = max(1, min(columns, count))
    rows = math.ceil(count / columns)
    if captions is not None and len(captions) != count:
        raise ValueError(f"{len(captions)} captions for {count} images.")
    if row_labels is not None and len(row_labels) != rows:
        raise ValueError(f"{len(row_labels)} row labels for {rows} rows.")
    scale = max(1, math.ceil(min_cell_size / min(images.shape[-2:])))
    cells = torch.nn.functional.interpolate(images.detach().float().cpu().clamp(0, 1), scale_factor=scale)
    cell_h, cell_w = cells.shape[-2:]
    font = _font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    caption_h = FONT_SIZE + 6 if captions is not None else 0
    label_w = 0
    if row_labels is not None:
        label_w = int(max(probe.textlength(label, font=font) for label in row_labels)) + 2 * PADDING
    width = label_w + columns * (cell_w + PADDING) + PADDING
    height = rows * (cell_h + caption_h + PADDING) + PADDING
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for index in range(count):
        row, column = divmod(index, columns)
        x = label_w + PADDING + column * (cell_w + PADDING)
        y = PADDING + row * (cell_h + caption_h + PADDING)
        canvas.paste(Image.fromarray(to_uint8(cells[index])), (x, y))
        if captions is not None:
            text = _fit(draw, captions[index], font, cell_w)
            draw.text((x + cell_w / 2, y + cell_h + 3), text, fill="black", font=font, anchor="ma")
    for row, label in enumerate(row_labels or []):
        y = PADDING + row * (cell_h + caption_h + PADDING) + cell_h / 2
        draw.text((label_w - PADDING, y), label, fill="black", font=font, anchor="rm")
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1).float() / 255


def labelled_grid(
    images: torch.Tensor, labels: Sequence[int], class_names: Sequence[str] | None, columns: int
) -> torch.Tensor:
    """`image_grid` of class-conditional samples, each captioned with its class name (its id without names)."""
    captions = [
        class_names[label] if class_names and 0 <= label < len(class_names) else f"class {label}" for label in labels
    ]
    return image_grid(images, columns, captions=captions)


def reconstruction_grid(originals: torch.Tensor, reconstructions: torch.Tensor, columns: int = 8) -> torch.Tensor:
    """`[3, H', W']` grid in [0, 1]: rows named "original" and "reconstruction" alternate the originals (resized to
    the reconstructions' size by `resize_images`) and their reconstructions, `columns` images wide."""
    originals = resize_images(originals.float(), reconstructions.shape[-2:])
    columns = max(1, min(columns, originals.shape[0]))
    rows, labels = [], []
    for start in range(0, originals.shape[0], columns):
        pair = (originals[start : start + columns], reconstructions[start : start + columns].float())
        for part in pair:  # pad a short last row so the two rows stay aligned
            rows.append(torch.cat([part, part.new_ones(columns - part.shape[0], *part.shape[1:])]))
        labels += ["original", "reconstruction"]
    return image_grid(torch.cat(rows), columns, row_labels=labels)


def save_reconstruction_grid(
    originals: torch.Tensor, reconstructions: torch.Tensor, path: str, columns: int = 8
) -> str:
    """Write `reconstruction_grid(...)` as a PNG and return its path."""
    return save_png(reconstruction_grid(originals, reconstructions, columns), path)
