"""Differentiable augmentation (DiffAugment, StyleGAN-T flavour) for discriminator inputs.

Default policy as the official RAE training: translation (up to 1/8 of the size, zero padding) first, then colour
(brightness, saturation, contrast), probability 1, no cutout.

All random parameters are drawn per sample from torch's global RNG on the input's device, so a
restored RNG state reproduces the exact same augmentations. Every op is differentiable w.r.t. the input
and free of host-device synchronisation.
"""

from collections.abc import Sequence

import torch

__all__ = ["DEFAULT_POLICY", "cutout", "diff_augment", "translate"]

_POLICIES = ("color", "translation", "cutout")
DEFAULT_POLICY = ("translation", "color")


def _per_sample_uniform(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Draw one ``U(low, high)`` value per sample, shaped ``[B, 1, 1, 1]`` for broadcasting."""
    return torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device) * (high - low) + low


def _color(x: torch.Tensor) -> torch.Tensor:
    """Random brightness, saturation and contrast, applied in that order."""
    x = x + _per_sample_uniform(x, -0.5, 0.5)
    channel_mean = x.mean(dim=1, keepdim=True)
    x = (x - channel_mean) * _per_sample_uniform(x, 0.0, 2.0) + channel_mean
    image_mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - image_mean) * _per_sample_uniform(x, 0.5, 1.5) + image_mean


def translate(x: torch.Tensor, shift_y: torch.Tensor, shift_x: torch.Tensor) -> torch.Tensor:
    """Shift each image by integer offsets with zero padding.

    Content moves by ``+shift`` pixels: ``out[b, :, i, j] = x[b, :, i - shift_y[b], j - shift_x[b]]``, and
    positions that fall outside the source image are zero.

    Args:
        x: Images ``[B, C, H, W]``.
        shift_y: Integer vertical shifts ``[B]`` (on ``x.device``).
        shift_x: Integer horizontal shifts ``[B]`` (on ``x.device``).
    """
    batch, channels, height, width = x.shape
    rows = torch.arange(height, device=x.device).unsqueeze(0) - shift_y.unsqueeze(1)  # [B, H]
    cols = torch.arange(width, device=x.device).unsqueeze(0) - shift_x.unsqueeze(1)  # [B, W]
    row_valid = (rows >= 0) & (rows < height)
    col_valid = (cols >= 0) & (cols < width)
    row_index = rows.clamp(0, height - 1)[:, None, :, None].expand(batch, channels, height, width)
    col_index = cols.clamp(0, width - 1)[:, None, None, :].expand(batch, channels, height, width)
    out = x.gather(2, row_index).gather(3, col_index)
    mask = row_valid[:, None, :, None] & col_valid[:, None, None, :]
    return out * mask.to(x.dtype)


def _random_translation(x: torch.Tensor, ratio: float) -> torch.Tensor:
    """Translate each image by a uniform integer shift in ``[-ratio * size, ratio * size]`` per axis."""
    max_y = round(x.shape[2] * ratio)
    max_x = round(x.shape[3] * ratio)
    shift_y = torch.randint(-max_y, max_y + 1, (x.shape[0],), device=x.device)
    shift_x = torch.randint(-max_x, max_x + 1, (x.shape[0],), device=x.device)
    return translate(x, shift_y, shift_x)


def cutout(x: torch.Tensor, center_y: torch.Tensor, center_x: torch.Tensor, size_y: int, size_x: int) -> torch.Tensor:
    """Zero a ``size_y x size_x`` rectangle centred at ``(center_y[b], center_x[b])`` in each image (clipped)."""
    top = (center_y - size_y // 2).unsqueeze(1)
    left = (center_x - size_x // 2).unsqueeze(1)
    rows = torch.arange(x.shape[2], device=x.device).unsqueeze(0)
    cols = torch.arange(x.shape[3], device=x.device).unsqueeze(0)
    in_rows = (rows >= top) & (rows < top + size_y)  # [B, H]
    in_cols = (cols >= left) & (cols < left + size_x)  # [B, W]
    hole = in_rows[:, None, :, None] & in_cols[:, None, None, :]
    return x * (~hole).to(x.dtype)


def _random_cutout(x: torch.Tensor, ratio: float) -> torch.Tensor:
    """Cut out one rectangle of ``ratio`` times the image size at a uniformly random centre per image."""
    center_y = torch.randint(0, x.shape[2], (x.shape[0],), device=x.device)
    center_x = torch.randint(0, x.shape[3], (x.shape[0],), device=x.device)
    return cutout(x, center_y, center_x, int(x.shape[2] * ratio + 0.5), int(x.shape[3] * ratio + 0.5))


def diff_augment(
    x: torch.Tensor,
    policy: Sequence[str] = DEFAULT_POLICY,
    translation_ratio: float = 0.125,
    cutout_ratio: float = 0.0,
) -> torch.Tensor:
    """Apply DiffAugment (probability 1) to images in ``[-1, 1]``.

    Args:
        x: Images ``[B, C, H, W]`` in ``[-1, 1]``.
        policy: Ops applied in the given order, any of ``"color"``, ``"translation"``, ``"cutout"``.
        translation_ratio: Maximum shift as a fraction of the image size.
        cutout_ratio: Cutout rectangle size as a fraction of the image size (``"cutout"`` only).

    Returns:
        Augmented images with the same shape as ``x`` (values may leave ``[-1, 1]``).
    """
    unknown = [p for p in policy if p not in _POLICIES]
    if unknown:
        raise ValueError(f"Unknown DiffAugment policy {unknown}; expected a subset of {_POLICIES}.")
    for op in policy:
        if op == "color":
            x = _color(x)
        elif op == "translation":
            x = _random_translation(x, translation_ratio)
        else:
            x = _random_cutout(x, cutout_ratio)
    return x
