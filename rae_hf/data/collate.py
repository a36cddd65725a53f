"""Batch collation that drops undecodable images and bounds how many may be dropped."""

from __future__ import annotations

from numbers import Number
from typing import Any

import torch

from rae_hf.data.images import BadImageError

__all__ = ["ImageCollator", "is_empty_batch"]

# Extra example keys renamed in the batch (``label`` is what ``imagefolder`` produces, models expect ``labels``).
_RENAMED_KEYS = {"label": "labels"}


class ImageCollator:
    """Collate ``{"pixel_values": Tensor | None, ...}`` examples into a batch.

    Examples whose ``pixel_values`` is ``None`` (undecodable images) are dropped; the batch carries
    ``num_skipped`` (a 0-d LongTensor). Counts of seen and skipped images are kept per process (each
    DataLoader worker has its own), and :class:`BadImageError` is raised once
    ``skipped > max(min_bad_images, max_bad_image_fraction * seen)``.

    A batch in which every image is bad (e.g. a trailing batch of one bad file) is returned EMPTY while the
    fraction limit holds: ``pixel_values`` of shape ``[0, *shape of the last good image]`` and the other keys
    empty too (:func:`is_empty_batch`); trainers and evaluation loops skip it. Only when this collator has not
    seen a good image yet (no shape to give) does it raise :class:`BadImageError`.

    Extra keys (e.g. ``label`` kept by ``with_image_transform``) are passed through for the kept
    examples: ``label`` becomes ``labels``; numbers become tensors, anything else stays a list.
    """

    def __init__(self, max_bad_image_fraction: float = 0.05, min_bad_images: int = 8) -> None:
        if not 0.0 <= max_bad_image_fraction <= 1.0:
            raise ValueError(f"max_bad_image_fraction must be in [0, 1], got {max_bad_image_fraction}")
        if min_bad_images < 0:
            raise ValueError(f"min_bad_images must be >= 0, got {min_bad_images}")
        self.max_bad_image_fraction = max_bad_image_fraction
        self.min_bad_images = min_bad_images
        self.num_seen = 0
        self.num_skipped = 0
        self._image_shape: tuple[int, ...] | None = None

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        """Stack the decodable examples of one batch."""
        kept = [example for example in examples if example["pixel_values"] is not None]
        skipped = len(examples) - len(kept)
        self.num_seen += len(examples)
        self.num_skipped += skipped
        self._check_bad_fraction()
        if not kept:
            if self._image_shape is None:
                raise BadImageError(
                    f"All {len(examples)} images of a batch could not be decoded before any good one "
                    f"({self.num_skipped} of {self.num_seen} so far in this process); check the dataset"
                )
            return self._empty_batch(examples, skipped)
        pixel_values = torch.stack([example["pixel_values"] for example in kept])
        self._image_shape = tuple(pixel_values.shape[1:])
        batch: dict[str, Any] = {"pixel_values": pixel_values, "num_skipped": torch.tensor(skipped, dtype=torch.long)}
        for key in kept[0].keys() - {"pixel_values"}:
            batch[_RENAMED_KEYS.get(key, key)] = _collate_values([example[key] for example in kept])
        return batch

    def _empty_batch(self, examples: list[dict[str, Any]], skipped: int) -> dict[str, Any]:
        """A zero-image batch with the usual keys (so it collates, moves to a device and is counted as skipped)."""
        batch: dict[str, Any] = {
            "pixel_values": torch.zeros(0, *self._image_shape),
            "num_skipped": torch.tensor(skipped, dtype=torch.long),
        }
        for key in examples[0].keys() - {"pixel_values"}:
            values = _collate_values([example[key] for example in examples])
            batch[_RENAMED_KEYS.get(key, key)] = values[:0]
        return batch

    def _check_bad_fraction(self) -> None:
        """Raise when more images were skipped than the configured limit allows."""
        limit = max(self.min_bad_images, self.max_bad_image_fraction * self.num_seen)
        if self.num_skipped > limit:
            raise BadImageError(
                f"{self.num_skipped} of {self.num_seen} images could not be decoded "
                f"(> max_bad_image_fraction={self.max_bad_image_fraction}); check the dataset or raise the limit"
            )


def is_empty_batch(batch: dict[str, Any]) -> bool:
    """Whether every image of a collated batch was undecodable (``ImageCollator`` returned zero images)."""
    pixel_values = batch.get("pixel_values")
    return isinstance(pixel_values, torch.Tensor) and pixel_values.shape[0] == 0


def _collate_values(values: list[Any]) -> torch.Tensor | list[Any]:
    """Tensor for numeric values (int -> LongTensor), the plain list otherwise."""
    if all(isinstance(value, Number) for value in values):
        return torch.tensor(values)
    return values
