"""Multi-crop views (counts, sizes, scales, blur probabilities), iBOT block masks and the collator."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from rae_hf.data.multicrop import (
    BlockMaskGenerator,
    MultiCropCollator,
    MultiCropTransform,
    crop_picture,
    multicrop_spec,
    preset_for_method,
)


def _image(size: tuple[int, int] = (120, 100)) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype("uint8"))


@pytest.mark.parametrize(
    ("preset", "views", "global_size", "local_size"),
    [("dinov2", 10, 224, 96), ("dino", 10, 224, 96), ("cifar", 10, 32, 16), ("two_view", 2, 224, None)],
)
def test_view_counts_and_sizes(preset: str, views: int, global_size: int, local_size: int | None) -> None:
    spec = multicrop_spec(preset)
    outputs = MultiCropTransform(spec)(_image())["views"]
    assert len(outputs) == views == spec.num_views
    assert all(view.shape == (3, global_size, global_size) for view in outputs[:2])
    assert all(view.shape == (3, local_size, local_size) for view in outputs[2:])
    assert all(torch.isfinite(view).all() and view.dtype == torch.float32 for view in outputs)


def test_overrides_win_over_preset_and_are_validated() -> None:
    spec = multicrop_spec("dinov2", global_size=32, local_size=16, num_local_crops=4, local_scale=None)
    assert (spec.global_size, spec.local_size, spec.num_local_crops, spec.local_scale) == (32, 16, 4, (0.05, 0.32))
    assert len(MultiCropTransform(spec)(_image())["views"]) == 6
    with pytest.raises(ValueError, match="num_local_crops"):
        multicrop_spec("dinov2", num_local_crops=11)
    with pytest.raises(ValueError, match="global_scale"):
        multicrop_spec("dino", global_scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="preset"):
        multicrop_spec("simclr")


def test_presets_scales_and_method_choice() -> None:
    assert multicrop_spec("dinov2").global_scale == (0.32, 1.0)
    assert multicrop_spec("dinov2").local_scale == (0.05, 0.32)
    assert multicrop_spec("dino").global_scale == (0.4, 1.0)
    assert multicrop_spec("dino").local_scale == (0.05, 0.4)
    assert (preset_for_method("dinov2"), preset_for_method("dino"), preset_for_method("byol")) == (
        "dinov2",
        "dino",
        "two_view",
    )


@pytest.mark.parametrize("preset", ["dinov2", "dino"])
def test_sampled_crop_boxes_honour_the_scales(preset: str) -> None:
    torch.manual_seed(0)
    transform = MultiCropTransform(multicrop_spec(preset))
    image = torch.zeros(3, 200, 200)
    for pipeline, (low, high) in (
        (transform.global_1, transform.spec.global_scale),
        (transform.local, transform.spec.local_scale),
    ):
        crop = pipeline.transforms[0]
        areas = []
        for _ in range(2000):
            params = crop.make_params([image])
            areas.append(params["height"] * params["width"] / 200**2)
        areas = torch.tensor(areas)
        assert areas.min() >= low - 0.01 and areas.max() <= high + 0.01
        assert areas.min() < low + 0.03 and areas.max() > high - 0.05  # the whole range is used


def test_blur_probabilities_and_upstream_bug_switch() -> None:
    def blur_probabilities(spec) -> list[float]:
        transform = MultiCropTransform(spec)
        return [pipe.transforms[4].p for pipe in (transform.global_1, transform.global_2, transform.local)]

    assert blur_probabilities(multicrop_spec("dinov2")) == [1.0, 0.1, 0.5]
    assert blur_probabilities(multicrop_spec("dinov2", blur_bug=True)) == pytest.approx([0.0, 0.9, 0.5])
    solarize = MultiCropTransform(multicrop_spec("dinov2")).global_2.transforms[5]
    assert solarize.p == 0.2 and solarize.threshold == 128


def test_block_masks_never_exceed_their_target() -> None:
    torch.manual_seed(0)
    generator = BlockMaskGenerator(14, 14)
    for target in (0, 5, 20, 60, 98, 150):
        mask = generator(target)
        assert mask.shape == (14, 14)
        assert mask.sum() <= target
        if target >= 8:
            assert mask.sum() >= 0.5 * target  # blocks reach most of the target


def test_collator_masks_half_the_global_crops_with_stratified_ratios() -> None:
    torch.manual_seed(0)
    batch_size, grid = 16, 14
    collator = MultiCropCollator(grid)
    ratios, counts = [], []
    for _ in range(20):
        out = collator.masks(2 * batch_size)
        masks = out["masks"]
        assert masks.shape == (2 * batch_size, grid * grid)
        per_crop = masks.sum(dim=1)
        counts.append(int((per_crop > 0).sum()))
        ratios += (per_crop[per_crop > 0] / grid**2).tolist()
        assert torch.equal(out["mask_indices"], masks.flatten().nonzero().flatten())
        # weights: 1 / masked patches of their crop -> they sum to 1 per masked crop
        assert out["mask_weights"].sum().item() == pytest.approx(int((per_crop > 0).sum()), rel=1e-5)
    assert max(counts) <= batch_size and min(counts) >= batch_size - 2  # half of the 2B crops (some may stay empty)
    ratios = torch.tensor(ratios)
    assert ratios.max() <= 0.5 and ratios.min() >= 0.02
    assert 0.2 < ratios.mean() < 0.35  # stratified over [0.1, 0.5]


def test_collator_stacks_views_crop_major_and_skips_bad_images() -> None:
    spec = multicrop_spec("cifar", num_local_crops=3)
    transform = MultiCropTransform(spec)
    examples = [{"pixel_values": transform(_image()), "label": i} for i in range(3)]
    examples.insert(1, {"pixel_values": None, "label": 9})
    collator = MultiCropCollator(8)
    batch = collator(examples)
    assert batch["global_crops"].shape == (6, 3, 32, 32)
    assert batch["local_crops"].shape == (9, 3, 16, 16)
    views = [example["pixel_values"]["views"] for example in examples if example["pixel_values"] is not None]
    assert torch.equal(batch["global_crops"][1], views[1][0])  # crop 1 of image 2
    assert torch.equal(batch["global_crops"][3], views[0][1])  # crop 2 of image 1
    assert torch.equal(batch["local_crops"][4], views[1][3])  # local 2 of image 2
    assert batch["labels"].tolist() == [0, 1, 2]
    assert batch["num_skipped"].item() == 1 and collator.num_skipped == 1
    assert batch["masks"].shape == (6, 64)
    no_masks = MultiCropCollator(None)(examples[:1])
    assert "masks" not in no_masks
    again = collator(examples)  # masks depend only on the examples' seeds
    assert torch.equal(again["masks"], batch["masks"])


def test_crop_picture_shows_every_view() -> None:
    spec = multicrop_spec("cifar", num_local_crops=2)
    transform = MultiCropTransform(spec)
    picture = crop_picture([transform(_image())["views"] for _ in range(2)], spec.mean, spec.std)
    assert picture.size == (32 + 2 + 32 + 2 + 16 + 2 + 16 + 2, 2 * 34)
    picture.save(io.BytesIO(), format="PNG")
