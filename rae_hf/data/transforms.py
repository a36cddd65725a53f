"""Every image preprocessing preset (torchvision v2, RGB PIL image -> float32 `[3, H, W]` in [0, 1]) and the one
tensor resize used to compare images with reconstructions.

Presets: `rae_train` (RAE: bicubic shorter side to 1.5x, random crop), `center_crop` (bicubic shorter side to the
size, centre crop), `adm_center_crop` (ADM / JiT / RAE evaluation: box-halve, bicubic, centre crop), `probe_eval`
(shorter side to `size / crop_pct`, centre crop), `probe_train` (random-resized crop + flip), `padded_crop_train`
(CIFAR-style: square resize, random crop with 1/8 padding, flip) and `resize` (square resize). Scripts take them
through `image_transform(preset, size, ...)`, which can append a normalization for models that expect normalized
pixels (ViT classifiers). Random ops draw from torch's global RNG, so checkpointed RNG states make resumption exact.
Multi-crop views (`rae_hf.data.multicrop`) end with the same `to_float_tensor()` tail.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2

__all__ = [
    "TRANSFORM_PRESETS",
    "ADMCenterCrop",
    "adm_center_crop",
    "adm_center_crop_transform",
    "build_image_transform",
    "default_resize_size",
    "image_transform",
    "padded_crop_train_transform",
    "probe_eval_transform",
    "probe_train_transform",
    "resize_images",
    "resize_transform",
    "to_float_tensor",
]

BICUBIC = v2.InterpolationMode.BICUBIC


def to_float_tensor() -> v2.Compose:
    """The tail of every preset: PIL image -> float32 tensor `[3, H, W]` in [0, 1]."""
    return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])


def _check_size(image_size: int) -> None:
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")


def default_resize_size(image_size: int) -> int:
    """Shorter-side resize used before the random train crop: 1.5x the crop (384 for 256, as in RAE)."""
    return round(image_size * 1.5)


def build_image_transform(
    image_size: int, resize_size: int | None = None, train: bool = True, hflip: bool = False
) -> v2.Compose:
    """The RAE presets: PIL image -> float32 `[3, image_size, image_size]` in [0, 1].

    Train (`rae_train`): bicubic antialiased resize of the shorter side to `resize_size` (default
    `default_resize_size`), random crop, optional horizontal flip. Eval (`center_crop`): bicubic resize of the
    shorter side to `image_size` and centre crop (`resize_size` and `hflip` are ignored).
    """
    _check_size(image_size)
    if train:
        resize_size = default_resize_size(image_size) if resize_size is None else resize_size
        if resize_size < image_size:
            raise ValueError(f"resize_size ({resize_size}) must be >= image_size ({image_size})")
        ops: list = [v2.Resize(resize_size, interpolation=BICUBIC, antialias=True), v2.RandomCrop(image_size)]
        if hflip:
            ops.append(v2.RandomHorizontalFlip())
    else:
        ops = [v2.Resize(image_size, interpolation=BICUBIC, antialias=True), v2.CenterCrop(image_size)]
    return v2.Compose([*ops, to_float_tensor()])


def adm_center_crop(image: Image.Image, image_size: int) -> Image.Image:
    """ADM's centre crop (also JiT's and RAE's evaluation crop): halve with a box filter while the shorter side is at
    least twice `image_size`, resize (bicubic) so the shorter side is `image_size` (rounding the other side), and
    cut the centre `image_size` square (offsets rounded down)."""
    _check_size(image_size)
    while min(image.size) >= 2 * image_size:
        image = image.resize(tuple(side // 2 for side in image.size), resample=Image.BOX)
    scale = image_size / min(image.size)
    image = image.resize(tuple(round(side * scale) for side in image.size), resample=Image.BICUBIC)
    left, top = (image.width - image_size) // 2, (image.height - image_size) // 2
    return image.crop((left, top, left + image_size, top + image_size))


class ADMCenterCrop:
    """`adm_center_crop` as a picklable transform of PIL images."""

    def __init__(self, image_size: int):
        _check_size(image_size)
        self.image_size = image_size

    def __call__(self, image: Image.Image) -> Image.Image:
        return adm_center_crop(image, self.image_size)

    def __repr__(self) -> str:
        return f"ADMCenterCrop(image_size={self.image_size})"


def adm_center_crop_transform(image_size: int, hflip: bool = False) -> v2.Compose:
    """`adm_center_crop` (then an optional random horizontal flip: the JiT / RAE stage-2 training data)."""
    ops: list = [ADMCenterCrop(image_size)]
    if hflip:
        ops.append(v2.RandomHorizontalFlip())
    return v2.Compose([*ops, to_float_tensor()])


def probe_eval_transform(image_size: int, crop_pct: float = 0.875) -> v2.Compose:
    """Bicubic resize of the shorter side to `image_size / crop_pct`, centre crop (DINOv2/MAE evaluation: 256 then
    224)."""
    _check_size(image_size)
    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}.")
    resize = round(image_size / crop_pct)
    return v2.Compose(
        [v2.Resize(resize, interpolation=BICUBIC, antialias=True), v2.CenterCrop(image_size), to_float_tensor()]
    )


def probe_train_transform(image_size: int) -> v2.Compose:
    """Random-resized crop (bicubic) and horizontal flip: the DINOv2/MAE linear-probe training augmentation."""
    _check_size(image_size)
    return v2.Compose(
        [
            v2.RandomResizedCrop(image_size, interpolation=BICUBIC, antialias=True),
            v2.RandomHorizontalFlip(),
            to_float_tensor(),
        ]
    )


def padded_crop_train_transform(image_size: int) -> v2.Compose:
    """Bicubic resize to `image_size` square, random crop with `image_size // 8` zero padding, horizontal flip (the
    CIFAR augmentation of small-image classifiers: 4 pixels at 32)."""
    _check_size(image_size)
    return v2.Compose(
        [
            v2.Resize((image_size, image_size), interpolation=BICUBIC, antialias=True),
            v2.RandomCrop(image_size, padding=image_size // 8),
            v2.RandomHorizontalFlip(),
            to_float_tensor(),
        ]
    )


def resize_transform(image_size: int) -> v2.Compose:
    """Bicubic resize to `image_size` square (evaluation of small-image classifiers)."""
    _check_size(image_size)
    return v2.Compose([v2.Resize((image_size, image_size), interpolation=BICUBIC, antialias=True), to_float_tensor()])


TRANSFORM_PRESETS = {
    "rae_train": lambda image_size, **kwargs: build_image_transform(image_size, train=True, **kwargs),
    "center_crop": lambda image_size: build_image_transform(image_size, train=False),
    "adm_center_crop": adm_center_crop_transform,
    "probe_eval": probe_eval_transform,
    "probe_train": probe_train_transform,
    "padded_crop_train": padded_crop_train_transform,
    "resize": resize_transform,
    "multicrop": lambda image_size, **kwargs: _multicrop_transform(image_size, **kwargs),
}


def _multicrop_transform(image_size: int, **kwargs):
    """DINO's multi-crop views (`rae_hf.data.multicrop.multicrop_transform`; imported here, where it is used)."""
    from rae_hf.data.multicrop import multicrop_transform

    return multicrop_transform(image_size, **kwargs)


def image_transform(
    preset: str,
    image_size: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **kwargs,
) -> v2.Compose:
    """The named preset of `TRANSFORM_PRESETS` at `image_size` (keyword options as the preset's builder): pixels in
    [0, 1], or normalized with `mean` / `std` when given (both or neither)."""
    if preset not in TRANSFORM_PRESETS:
        raise ValueError(f"Unknown transform preset {preset!r}; choose one of {sorted(TRANSFORM_PRESETS)}.")
    transform = TRANSFORM_PRESETS[preset](image_size, **kwargs)
    if (mean is None) != (std is None):
        raise ValueError("image_transform: pass both mean and std to normalize, or neither.")
    if mean is None:
        return transform
    return v2.Compose([transform, v2.Normalize(list(mean), list(std))])


def resize_images(images: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Images `[B, C, H, W]` in [0, 1] at `size` (H', W'): bicubic with antialiasing (so downscaling does not alias;
    it changes nothing when upscaling), clamped back to [0, 1] (bicubic overshoots). Returned unchanged when the
    size already matches. The one resize of originals to a reconstruction's size: pixel losses, rFID/PSNR/SSIM and
    the grids all use it."""
    size = tuple(int(side) for side in size)
    if tuple(images.shape[-2:]) == size:
        return images
    resized = F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=True)
    return resized.clamp(0, 1)
