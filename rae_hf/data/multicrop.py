"""Multi-crop views for DINO-style self-supervised pretraining (torchvision v2) and iBOT block masks.

Presets (explicit arguments always win over a preset's values, see :func:`multicrop_spec`):

- ``dinov2``: DINOv2's official recipe: 2 global crops 224 px at scale (0.32, 1), 8 local crops 96 px at
  (0.05, 0.32), blur kernel 9 with sigma U(0.1, 2) at probabilities 1.0 / 0.1 / 0.5 (global 1 / global 2 / local).
  ``blur_bug=True`` reproduces the upstream code, which applies each blur with probability 1 - p (0 / 0.9 / 0.5),
  the setting DINOv2's released checkpoints were trained with.
- ``dino``: DINO v1: (0.4, 1) / (0.05, 0.4), PIL Gaussian blur of radius U(0.1, 2). These are the scales the seed's
  data-pipeline document calls "DINOv2 official".
- ``cifar``: small images (Gani et al.): global 32 px at (0.7, 1), 8 local 16 px at (0.2, 0.5), CIFAR mean/std, and
  no blur (a 9-pixel kernel wipes out 32 px images; solo-learn's CIFAR recipes also drop it).
- ``two_view``: the DINOv2 recipe with the 2 global crops only, for methods trained on two views.

Views are normalized with the preset's mean/std (the exported backbone's image processor uses the same values).
Crops draw from torch's global RNG (seeded per sample by the trainer's `data.seeded`); each example also carries a
seed drawn there, from which the collator draws the batch's masks, so masks too depend only on (seed, epoch,
indices) and a resumed run redraws exactly the same views and masks.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Iterable, Sequence
from itertools import pairwise
from typing import Any

import torch
from PIL import Image, ImageFilter
from torchvision.transforms import v2
from transformers.utils.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from rae_hf.data.collate import ImageCollator, _collate_values
from rae_hf.data.images import BadImageError

logger = logging.getLogger(__name__)

IMAGENET_MEAN = tuple(IMAGENET_DEFAULT_MEAN)
IMAGENET_STD = tuple(IMAGENET_DEFAULT_STD)

__all__ = [
    "MULTICROP_PRESETS",
    "BlockMaskGenerator",
    "MultiCropCollator",
    "MultiCropSpec",
    "MultiCropTransform",
    "check_multicrop_batches",
    "crop_picture",
    "first_views",
    "multicrop_spec",
    "multicrop_transform",
    "preset_for_method",
    "save_crop_picture",
]

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
BLUR_KINDS = ("kernel", "pil")


@dataclasses.dataclass(frozen=True)
class MultiCropSpec:
    """Sizes, scales and photometric recipe of the multi-crop views (2 global crops + ``num_local_crops``)."""

    global_size: int = 224
    local_size: int = 96
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.32)
    num_local_crops: int = 8
    blur: str = "kernel"
    blur_probabilities: tuple[float, float, float] = (1.0, 0.1, 0.5)
    blur_bug: bool = False
    solarize_probability: float = 0.2
    color_jitter_probability: float = 0.8
    grayscale_probability: float = 0.2
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        for name in ("global_size", "local_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")
        if not 0 <= self.num_local_crops <= 10:
            raise ValueError(f"num_local_crops must be in [0, 10], got {self.num_local_crops}.")
        for name in ("global_scale", "local_scale"):
            low, high = getattr(self, name)
            if not 0.0 < low <= high <= 1.0:
                raise ValueError(f"{name} must satisfy 0 < low <= high <= 1, got {(low, high)}.")
        if self.blur not in BLUR_KINDS:
            raise ValueError(f"blur must be one of {BLUR_KINDS}, got {self.blur!r}.")
        probabilities = (
            *self.blur_probabilities,
            self.solarize_probability,
            self.color_jitter_probability,
            self.grayscale_probability,
        )
        if len(self.blur_probabilities) != 3 or not all(0.0 <= p <= 1.0 for p in probabilities):
            raise ValueError("blur_probabilities (3 values) and the other probabilities must lie in [0, 1].")

    @property
    def num_views(self) -> int:
        return 2 + self.num_local_crops

    @property
    def effective_blur_probabilities(self) -> tuple[float, float, float]:
        """Probabilities actually applied: 1 - p per crop kind with ``blur_bug`` (upstream DINOv2 code)."""
        return tuple(1.0 - p for p in self.blur_probabilities) if self.blur_bug else tuple(self.blur_probabilities)


MULTICROP_PRESETS: dict[str, dict[str, Any]] = {
    "dinov2": {},
    "dino": {"global_scale": (0.4, 1.0), "local_scale": (0.05, 0.4), "blur": "pil"},
    "cifar": {
        "global_size": 32,
        "local_size": 16,
        "global_scale": (0.7, 1.0),
        "local_scale": (0.2, 0.5),
        "blur_probabilities": (0.0, 0.0, 0.0),
        "mean": CIFAR_MEAN,
        "std": CIFAR_STD,
    },
    "two_view": {"num_local_crops": 0},
}

_METHOD_PRESETS = {"dinov2": "dinov2", "dino": "dino"}


def preset_for_method(method: str) -> str:
    """Crop preset of a training method: DINO and DINOv2 get multi-crop, any other method two views."""
    return _METHOD_PRESETS.get(method, "two_view")


def multicrop_spec(preset: str = "dinov2", **overrides: Any) -> MultiCropSpec:
    """The preset's :class:`MultiCropSpec` with ``overrides`` (``None`` values are ignored) applied on top."""
    if preset not in MULTICROP_PRESETS:
        raise ValueError(f"Unknown multi-crop preset {preset!r}; choose one of {sorted(MULTICROP_PRESETS)}.")
    values = dict(MULTICROP_PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})
    for name in ("global_scale", "local_scale", "blur_probabilities", "mean", "std"):
        if name in values:
            values[name] = tuple(float(v) for v in values[name])
    return MultiCropSpec(**values)


class RandomPILGaussianBlur(v2.Transform):
    """DINO v1 blur: with probability ``p``, PIL Gaussian blur of radius U(radius_min, radius_max) (torch RNG)."""

    def __init__(self, p: float, radius_min: float = 0.1, radius_max: float = 2.0):
        super().__init__()
        self.p, self.radius_min, self.radius_max = p, radius_min, radius_max

    def forward(self, image: Image.Image) -> Image.Image:
        if self.p < 1.0 and torch.rand(()).item() >= self.p:
            return image
        radius = self.radius_min + (self.radius_max - self.radius_min) * torch.rand(()).item()
        return image.filter(ImageFilter.GaussianBlur(radius=radius))


class MultiCropTransform:
    """RGB PIL image -> ``[global_1, global_2, local_1, ..., local_N]`` normalized float tensors.

    Per crop: bicubic RandomResizedCrop + horizontal flip, colour jitter (0.4, 0.4, 0.2, 0.1) with p 0.8,
    grayscale p 0.2, Gaussian blur (per crop kind), solarize (threshold 128, second global crop only), normalize.
    """

    def __init__(self, spec: MultiCropSpec):
        self.spec = spec
        blur_global_1, blur_global_2, blur_local = spec.effective_blur_probabilities
        self.global_1 = self._pipeline(spec.global_size, spec.global_scale, blur_global_1)
        self.global_2 = self._pipeline(spec.global_size, spec.global_scale, blur_global_2, spec.solarize_probability)
        self.local = self._pipeline(spec.local_size, spec.local_scale, blur_local)

    def _pipeline(self, size: int, scale: tuple[float, float], blur_p: float, solarize_p: float = 0.0) -> v2.Compose:
        spec = self.spec
        ops: list[v2.Transform] = [
            v2.RandomResizedCrop(size, scale=scale, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.RandomHorizontalFlip(p=0.5),
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=spec.color_jitter_probability),
            v2.RandomGrayscale(p=spec.grayscale_probability),
        ]
        if spec.blur == "kernel":
            ops.append(v2.RandomApply([v2.GaussianBlur(kernel_size=9, sigma=(0.1, 2.0))], p=blur_p))
        else:
            ops.append(RandomPILGaussianBlur(blur_p))
        if solarize_p > 0:
            ops.append(v2.RandomSolarize(threshold=128, p=solarize_p))
        ops += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(spec.mean, spec.std)]
        return v2.Compose(ops)

    def __call__(self, image: Image.Image) -> dict[str, Any]:
        """``{"views": [global_1, global_2, *locals], "seed": int}`` (the seed drives the batch's masks)."""
        views = [self.global_1(image), self.global_2(image)]
        views += [self.local(image) for _ in range(self.spec.num_local_crops)]
        return {"views": views, "seed": int(torch.randint(0, 2**62, ()))}

    def __repr__(self) -> str:
        return f"MultiCropTransform({self.spec})"


def multicrop_transform(image_size: int, spec: MultiCropSpec | None = None, **overrides: Any) -> MultiCropTransform:
    """The ``multicrop`` preset of ``rae_hf.data.transforms.image_transform``: the views of ``spec`` (default: the
    ``dinov2`` preset with ``overrides``), whose global crops must be ``image_size``. Views come normalized."""
    spec = spec or multicrop_spec(**{"global_size": image_size, **overrides})
    if spec.global_size != image_size:
        raise ValueError(f"multicrop preset: image_size {image_size} differs from the global crop {spec.global_size}.")
    return MultiCropTransform(spec)


class BlockMaskGenerator:
    """iBOT/BEiT block masks on a ``height x width`` patch grid.

    Rectangles of area U(min_patches, min(remaining, max_patches)) and log-uniform aspect ratio in
    [min_aspect, 1 / min_aspect] are added at random positions; one is kept only if it adds between 1 and
    ``remaining`` new patches (10 tries per rectangle); masking stops at the target or when no try adds a patch.
    """

    def __init__(
        self,
        height: int,
        width: int,
        max_fraction: float = 0.5,
        min_patches: int = 4,
        min_aspect: float = 0.3,
        tries: int = 10,
    ):
        if height <= 0 or width <= 0:
            raise ValueError(f"mask grid must be positive, got {height}x{width}.")
        self.height, self.width = height, width
        self.max_patches = int(max_fraction * height * width)
        self.min_patches = min_patches
        self.log_aspect = (math.log(min_aspect), math.log(1.0 / min_aspect))
        self.tries = tries

    def _add_block(self, mask: torch.Tensor, limit: int, generator: torch.Generator | None) -> int:
        """Try to add one rectangle of at most ``limit`` new patches; the number of patches added."""
        for _ in range(self.tries):
            area = uniform(self.min_patches, limit, generator)
            aspect = math.exp(uniform(*self.log_aspect, generator))
            h = round(math.sqrt(area * aspect))
            w = round(math.sqrt(area / aspect))
            if w >= self.width or h >= self.height:
                continue
            top = int(torch.randint(0, self.height - h + 1, (), generator=generator))
            left = int(torch.randint(0, self.width - w + 1, (), generator=generator))
            block = mask[top : top + h, left : left + w]
            new = h * w - int(block.sum().item())
            if 0 < new <= limit:
                block.fill_(True)
                return new
        return 0

    def __call__(self, num_patches: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """A bool mask ``[height, width]`` with at most ``num_patches`` patches set (each rectangle at most
        ``max_fraction * N``; the collator's targets never exceed half of the patches)."""
        mask = torch.zeros(self.height, self.width, dtype=torch.bool)
        count = 0
        while count < num_patches:
            added = self._add_block(mask, min(num_patches - count, self.max_patches), generator)
            if added == 0:
                break
            count += added
        return mask


class MultiCropCollator(ImageCollator):
    """Collate examples whose ``pixel_values`` are :class:`MultiCropTransform` outputs into a DINO batch.

    Batch (B kept images, N local crops, P patches per global crop):
    ``global_crops [2B, 3, G, G]`` crop-major (crop 1 of every image, then crop 2), ``local_crops [NB, 3, L, L]``
    (absent when N = 0), and when masking is on: ``masks [2B, P]`` bool, ``mask_indices`` (flat indices of the masked
    patches in ``masks``), ``mask_weights`` (1 / masked patches of the patch's crop), ``num_skipped``, plus passed
    through columns (``label`` -> ``labels``). Half of the 2B global crops (chosen at random) are masked, crop i of
    them at a ratio drawn in the i-th of B equal bins of ``mask_ratio``, from a generator seeded by the examples'
    seeds. Bad images are dropped and counted as in :class:`ImageCollator`.
    """

    def __init__(
        self,
        patch_grid: int | None,
        mask_ratio: tuple[float, float] = (0.1, 0.5),
        mask_probability: float = 0.5,
        max_bad_image_fraction: float = 0.05,
        min_bad_images: int = 8,
    ):
        super().__init__(max_bad_image_fraction, min_bad_images)
        if not 0.0 <= mask_ratio[0] <= mask_ratio[1] <= 1.0:
            raise ValueError(f"mask_ratio must satisfy 0 <= low <= high <= 1, got {mask_ratio}.")
        if not 0.0 <= mask_probability <= 1.0:
            raise ValueError(f"mask_probability must be in [0, 1], got {mask_probability}.")
        self.mask_ratio = tuple(mask_ratio)
        self.mask_probability = mask_probability
        self.mask_generator = None if patch_grid is None else BlockMaskGenerator(patch_grid, patch_grid)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        kept = [example for example in examples if example["pixel_values"] is not None]
        self.num_seen += len(examples)
        self.num_skipped += len(examples) - len(kept)
        self._check_bad_fraction()
        if not kept:
            raise BadImageError(f"All {len(examples)} images of a batch could not be decoded; check the dataset")
        views = [example["pixel_values"]["views"] for example in kept]
        num_views = len(views[0])
        batch: dict[str, Any] = {
            "global_crops": torch.stack([view[i] for i in range(2) for view in views]),
            "num_skipped": torch.tensor(len(examples) - len(kept), dtype=torch.long),
        }
        if num_views > 2:
            batch["local_crops"] = torch.stack([view[i] for i in range(2, num_views) for view in views])
        if self.mask_generator is not None:
            seed = sum(example["pixel_values"]["seed"] for example in kept) % 2**63
            batch.update(self.masks(batch["global_crops"].shape[0], torch.Generator().manual_seed(seed)))
        for key in kept[0].keys() - {"pixel_values"}:
            batch[{"label": "labels"}.get(key, key)] = _collate_values([example[key] for example in kept])
        return batch

    def masks(self, num_crops: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Block masks for ``num_crops`` global crops: ``masks``, ``mask_indices``, ``mask_weights``."""
        blocks = self.mask_generator
        num_patches = blocks.height * blocks.width
        num_masked = int(self.mask_probability * num_crops)
        bounds = torch.linspace(*self.mask_ratio, num_masked + 1).tolist()
        masks = [blocks(int(num_patches * uniform(lo, hi, generator)), generator) for lo, hi in pairwise(bounds)]
        masks += [torch.zeros(blocks.height, blocks.width, dtype=torch.bool)] * (num_crops - num_masked)
        order = torch.randperm(num_crops, generator=generator).tolist()
        flat = torch.stack([masks[i] for i in order]).flatten(1)
        weights = (1.0 / flat.sum(dim=1).clamp(min=1)).unsqueeze(1).expand_as(flat)[flat]
        return {"masks": flat, "mask_indices": flat.flatten().nonzero().flatten(), "mask_weights": weights}


def uniform(low: float, high: float, generator: torch.Generator | None = None) -> float:
    """A float drawn uniformly between ``low`` and ``high`` (either order)."""
    return low + (high - low) * float(torch.rand((), generator=generator))


def crop_picture(views: Sequence[torch.Tensor], mean: Sequence[float], std: Sequence[float]) -> Image.Image:
    """One row per image of its views as the model sees them (de-normalized to [0, 1]); locals at their own size.

    ``views`` lists per image the view tensors of :class:`MultiCropTransform` (globals first).
    """
    mean_t = torch.tensor(mean).view(3, 1, 1)
    std_t = torch.tensor(std).view(3, 1, 1)
    height = max(view.shape[-2] for row in views for view in row)
    width = sum(view.shape[-1] + 2 for view in views[0])
    canvas = Image.new("RGB", (width, (height + 2) * len(views)), (255, 255, 255))
    for r, row in enumerate(views):
        x = 0
        for view in row:
            pixels = (view * std_t + mean_t).clamp(0, 1)
            canvas.paste(v2.functional.to_pil_image(pixels), (x, r * (height + 2)))
            x += view.shape[-1] + 2
    return canvas


def batch_views(batch: dict[str, Any]) -> list[list[torch.Tensor]]:
    """Per image, its views ``[global_1, global_2, *locals]`` out of a crop-major :class:`MultiCropCollator` batch."""
    images = batch["global_crops"].shape[0] // 2
    local = batch.get("local_crops")
    num_local = 0 if local is None else local.shape[0] // images
    return [
        [batch["global_crops"][i], batch["global_crops"][images + i]]
        + [local[k * images + i] for k in range(num_local)]
        for i in range(images)
    ]


def first_views(dataset: Iterable[dict[str, Any]], count: int, collator: MultiCropCollator) -> dict[str, Any]:
    """The first ``count`` decodable examples of a multi-crop dataset (``with_image_transform`` of a
    :class:`MultiCropTransform`, map-style or streamed) collated by ``collator``: bad images are skipped and counted
    (``num_skipped``) as in training, and the scan stops with :class:`BadImageError` where training would."""
    examples, good = [], 0
    rows = (dataset[i] for i in range(len(dataset))) if hasattr(dataset, "__len__") else iter(dataset)
    for example in rows:
        examples.append(example)
        good += example["pixel_values"] is not None
        bad = len(examples) - good
        if good == count or bad > max(collator.min_bad_images, collator.max_bad_image_fraction * len(examples)):
            break
    return collator(examples)


def save_crop_picture(
    dataset: Iterable[dict[str, Any]], spec: MultiCropSpec, path: str, count: int = 4, max_bad_image_fraction=0.05
) -> tuple[Image.Image, int]:
    """The views of the first ``count`` decodable images as the model sees them, saved as a PNG; the picture and the
    number of undecodable images skipped on the way."""
    batch = first_views(dataset, count, MultiCropCollator(None, max_bad_image_fraction=max_bad_image_fraction))
    skipped = int(batch["num_skipped"])
    if skipped:
        logger.warning("Crop picture: skipped %d undecodable image(s) among the first images.", skipped)
    picture = crop_picture(batch_views(batch), spec.mean, spec.std)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    picture.save(path)
    return picture, skipped


def check_multicrop_batches(batches: Iterable[dict[str, Any]], spec: MultiCropSpec, count: int) -> bool:
    """Print the views of the first ``count`` batches (sizes, value ranges, mask ratios, skipped images); False on
    NaN/Inf, a wrong number of views or sizes, or too many undecodable images (reported, not raised)."""
    ok = True
    iterator = iter(batches)
    for index in range(count):
        try:
            batch = next(iterator, None)
        except BadImageError as error:
            print(f"batch {index}: {error}")
            return False
        if batch is None:
            break
        images = batch["global_crops"].shape[0] // 2
        local = batch.get("local_crops")
        views = 2 + (0 if local is None else local.shape[0] // images)
        tensors = [batch["global_crops"]] + ([] if local is None else [local])
        finite = all(bool(torch.isfinite(t).all()) for t in tensors)
        sizes_ok = batch["global_crops"].shape[-1] == spec.global_size and (
            local is None or local.shape[-1] == spec.local_size
        )
        line = (
            f"batch {index}: {images} images, {views} views per image (expected {spec.num_views}): 2 global crops "
            f"{tuple(batch['global_crops'].shape[1:])}"
        )
        if local is not None:
            line += f", {views - 2} local crops {tuple(local.shape[1:])}"
        ranges = ", ".join(f"[{t.min():.2f}, {t.max():.2f}]" for t in tensors)
        line += f"; value ranges {ranges}; finite {finite}"
        if "masks" in batch:
            ratios = batch["masks"].float().mean(dim=1)
            masked = ratios[ratios > 0]
            if masked.numel():
                line += (
                    f"; masked crops {masked.numel()}/{ratios.numel()}, mask ratios "
                    f"[{masked.min():.2f}, {masked.max():.2f}]"
                )
        skipped = int(batch.get("num_skipped", 0))
        if skipped:
            line += f"; skipped {skipped} undecodable image(s)"
        print(line)
        ok = ok and finite and views == spec.num_views and sizes_ok
    return ok
