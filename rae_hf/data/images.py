"""Decode one dataset image cell into an 8-bit RGB PIL image."""

from __future__ import annotations

import io
import os
import struct
import zlib
from typing import Any

import fsspec
import numpy as np
from PIL import Image, ImageOps

__all__ = ["MAX_ASPECT_RATIO", "BadImageError", "load_rgb_image", "to_rgb"]

# Longer side / shorter side above which an image is refused (counted as bad) before it is decoded: every preset
# resizes the SHORTER side to the crop size, so the resized image holds `ratio x size^2` pixels (a 1x40000 PNG of
# 113 bytes would become 384 x 15.4M pixels, ~18 GB). 32 keeps that under 32 crops' worth of pixels and keeps every
# ordinary photo or panorama (ImageNet's widest are about 1:10; a 360-degree panorama is 1:2).
MAX_ASPECT_RATIO = 32.0

# Errors Pillow (and its codecs) raise for unreadable, corrupt or truncated files.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, Image.DecompressionBombError)
_SIXTEEN_BIT_MAX = 65535.0
_WHITE = (255, 255, 255, 255)


class BadImageError(ValueError):
    """An image could not be decoded (corrupt, truncated, empty or unsupported)."""


def load_rgb_image(value: Any, max_aspect_ratio: float | None = MAX_ASPECT_RATIO) -> Image.Image:
    """Decode a PIL image, a ``{"bytes", "path"}`` dict or a path into a fully loaded 8-bit RGB image.

    Files and bytes get their EXIF orientation applied, as ``datasets.Image`` decoding does (an already
    decoded PIL image is taken as is). Raises :class:`BadImageError` naming the file when the data cannot
    be decoded, the image has zero size, or its sides differ by more than ``max_aspect_ratio`` (checked from the
    header, before decoding; see :data:`MAX_ASPECT_RATIO`; None: no limit).
    """
    source = _describe(value)
    try:
        image = _open(value)
        opened_here = image is not value
        try:
            if image.width == 0 or image.height == 0:
                raise BadImageError(f"Image {source} has zero size {image.size}")
            ratio = max(image.size) / min(image.size)
            if max_aspect_ratio is not None and ratio > max_aspect_ratio:
                raise BadImageError(
                    f"Image {source} of size {image.size[0]}x{image.size[1]} has an aspect ratio of {ratio:.0f}:1 "
                    f"(> {max_aspect_ratio:g}); resizing its shorter side would take unbounded memory"
                )
            image.load()
            if opened_here:
                ImageOps.exif_transpose(image, in_place=True)
            return to_rgb(image)
        finally:
            if opened_here:
                image.close()
    except BadImageError:
        raise
    except _DECODE_ERRORS as err:
        raise BadImageError(f"Could not decode image {source}: {type(err).__name__}: {err}") from err


def to_rgb(image: Image.Image) -> Image.Image:
    """Return a new 8-bit RGB copy of ``image``; transparency is composited onto white.

    16-bit modes (``I;16*`` and ``I``) are scaled by the full 16-bit range (65535 -> 255). Float ``F``
    images with all values in [0, 1] are scaled by 255, otherwise they are read as [0, 255] and clipped.
    """
    if image.mode.startswith("I;16") or image.mode == "I":
        array = np.asarray(image).astype(np.float64) * (255.0 / _SIXTEEN_BIT_MAX)
        return _gray_to_rgb(array)
    if image.mode == "F":
        array = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if array.size and array.min() >= 0.0 and array.max() <= 1.0:
            array = array * 255.0
        return _gray_to_rgb(array)
    if "A" in image.getbands() or image.mode in ("RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")
    return image.convert("RGB")


def _gray_to_rgb(array: np.ndarray) -> Image.Image:
    """Round and clip a float grayscale array to uint8 and expand it to RGB."""
    gray = np.clip(np.rint(array), 0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")


def _open(value: Any) -> Image.Image:
    """Open (without decoding) the image referenced by a dataset cell."""
    if isinstance(value, Image.Image):
        return value
    data = value
    if isinstance(value, dict):
        data = value["bytes"] if value.get("bytes") is not None else value.get("path")
    if isinstance(data, (bytes, bytearray)):
        return Image.open(io.BytesIO(data))
    if isinstance(data, (str, os.PathLike)):
        path = os.fspath(data)
        if "://" in path:
            with fsspec.open(path, "rb") as remote:
                return Image.open(io.BytesIO(remote.read()))
        return Image.open(path)
    raise BadImageError(f"Unsupported image value {_describe(value)}")


def _describe(value: Any) -> str:
    """Short human-readable name of an image cell for error messages."""
    if isinstance(value, Image.Image):
        filename = getattr(value, "filename", "")
        return repr(filename) if filename else f"<in-memory {value.mode} image {value.size}>"
    if isinstance(value, dict):
        if value.get("path"):
            return repr(value["path"])
        if value.get("bytes") is not None:
            return f"<{len(value['bytes'])} bytes in memory>"
        return "<empty image cell>"
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes in memory>"
    if isinstance(value, (str, os.PathLike)):
        return repr(os.fspath(value))
    return f"<{type(value).__name__}>"
