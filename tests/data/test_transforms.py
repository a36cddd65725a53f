"""Transform presets (RAE train/centre crop, ADM centre crop, probe), the one resize-to-reconstruction function and
the per-process sharding helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from rae_hf.data import (
    TRANSFORM_PRESETS,
    adm_center_crop,
    build_image_transform,
    image_transform,
    probe_eval_transform,
    probe_train_transform,
    process_range,
    resize_images,
    to_float_tensor,
)
from rae_hf.visualization import image_grid, reconstruction_grid


def gradient_image(width: int, height: int) -> Image.Image:
    """An image whose pixels encode their coordinates (so crops and flips are visible)."""
    x = np.linspace(0, 255, width, dtype=np.float64)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.float64)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, (x + y) / 2], axis=-1).round().astype(np.uint8))


def test_adm_center_crop_equals_hand_steps():
    """600x400 at 64: box-halve to 300x200 and 150x100 (100 < 128 stops), bicubic to 96x64, centre 64 (left 16)."""
    image = gradient_image(600, 400)
    by_hand = image.resize((300, 200), Image.BOX).resize((150, 100), Image.BOX).resize((96, 64), Image.BICUBIC)
    by_hand = by_hand.crop((16, 0, 80, 64))
    cropped = adm_center_crop(image, 64)
    assert cropped.size == (64, 64)
    np.testing.assert_array_equal(np.asarray(cropped), np.asarray(by_hand))
    tall = adm_center_crop(gradient_image(70, 131), 64)  # no halving; 64x120 after resize; top offset 28
    np.testing.assert_array_equal(
        np.asarray(tall), np.asarray(gradient_image(70, 131).resize((64, 120), Image.BICUBIC).crop((0, 28, 64, 92)))
    )
    tensor = image_transform("adm_center_crop", 64)(image)
    assert tensor.shape == (3, 64, 64) and tensor.dtype == torch.float32
    torch.testing.assert_close(tensor, torch.from_numpy(np.array(by_hand)).permute(2, 0, 1).float() / 255)


def test_presets_by_name_shapes_and_randomness():
    image = gradient_image(90, 60)
    assert set(TRANSFORM_PRESETS) == {
        "rae_train", "center_crop", "adm_center_crop", "probe_eval", "probe_train", "padded_crop_train", "resize",
        "multicrop",
    }  # fmt: skip
    for name in set(TRANSFORM_PRESETS) - {"multicrop"}:  # one image -> one tensor (multicrop: a dict of views)
        output = image_transform(name, 32)(image)
        assert output.shape == (3, 32, 32) and 0 <= output.min() and output.max() <= 1, name
    torch.testing.assert_close(image_transform("center_crop", 32)(image), build_image_transform(32, train=False)(image))
    torch.manual_seed(0)
    first = image_transform("rae_train", 32, resize_size=40, hflip=True)(image)
    torch.manual_seed(0)
    assert torch.equal(first, build_image_transform(32, resize_size=40, hflip=True)(image))
    flipped = image_transform("adm_center_crop", 32, hflip=True)
    outputs = {tuple(flipped(image)[0, 0, :2].tolist()) for _ in range(20)}
    assert len(outputs) == 2  # flipped and not
    with pytest.raises(ValueError, match="Unknown transform preset 'nope'"):
        image_transform("nope", 32)


def test_adm_preset_with_flip_is_the_crop_then_a_seeded_flip():
    """What JiT trains on (it had its own copy of this crop before): ADM crop, then flip iff torch.rand(1) < 0.5."""
    image = gradient_image(300, 170)
    crop = to_float_tensor()(adm_center_crop(image, 32))
    transform = image_transform("adm_center_crop", 32, hflip=True)
    flips = set()
    for seed in range(8):
        torch.manual_seed(seed)
        flip = bool(torch.rand(1) < 0.5)
        torch.manual_seed(seed)
        torch.testing.assert_close(transform(image), crop.flip(-1) if flip else crop, rtol=0, atol=0)
        flips.add(flip)
    assert flips == {True, False}


def test_small_image_presets_and_normalization():
    """CIFAR-style: square resize, random crop with size // 8 zero padding (4 at 32) and flip; eval: square resize.
    `mean`/`std` append a normalization (ViT classifiers take normalized pixels)."""
    image = gradient_image(40, 30)
    resize = image_transform("resize", 32)
    np.testing.assert_allclose(
        resize(image).permute(1, 2, 0).numpy() * 255, np.asarray(image.resize((32, 32), Image.BICUBIC)), atol=1.5
    )
    crop = TRANSFORM_PRESETS["padded_crop_train"](32).transforms[1]
    assert crop.size == (32, 32) and crop.padding == [4, 4, 4, 4]
    normalized = image_transform("resize", 32, mean=[0.5] * 3, std=[0.25] * 3)(image)
    torch.testing.assert_close(normalized, (resize(image) - 0.5) / 0.25)
    shifted = [image_transform("padded_crop_train", 32)(image) for _ in range(20)]
    assert len({tuple(t[0, 0, :8].tolist()) for t in shifted}) > 1  # random offsets and flips
    with pytest.raises(ValueError, match="both mean and std"):
        image_transform("resize", 32, mean=[0.5] * 3)


def test_probe_presets_keep_their_numbers():
    """Probe eval: shorter side to size / crop_pct (224 / 0.875 = 256), centre crop; train: random-resized + flip."""
    resize, crop = probe_eval_transform(224).transforms[:2]
    assert resize.size == [256] and crop.size == (224, 224)
    assert probe_eval_transform(32, crop_pct=1.0).transforms[0].size == [32]
    with pytest.raises(ValueError, match="crop_pct"):
        probe_eval_transform(32, crop_pct=0)
    assert probe_train_transform(16)(gradient_image(40, 30)).shape == (3, 16, 16)


def test_resize_images_is_antialiased_bicubic_clamped_and_shared():
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert resize_images(images, (32, 32)) is images
    expected = F.interpolate(images, size=(16, 16), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    torch.testing.assert_close(resize_images(images, torch.Size([16, 16])), expected)
    upscaled = resize_images(images, (48, 48))
    assert upscaled.min() >= 0 and upscaled.max() <= 1
    grid = reconstruction_grid(images, torch.zeros(2, 3, 16, 16), columns=2)  # originals resized like the metrics
    rows = torch.cat([expected, torch.zeros(2, 3, 16, 16)])
    torch.testing.assert_close(grid, image_grid(rows, 2, row_labels=["original", "reconstruction"]))


def test_process_ranges_cover_every_index_once():
    for count in (0, 1, 7, 11):
        for processes in (1, 2, 3, 5):
            ranges = [process_range(count, rank, processes) for rank in range(processes)]
            assert [i for r in ranges for i in r] == list(range(count))
            assert max(map(len, ranges)) - min(map(len, ranges)) <= 1
    with pytest.raises(ValueError, match="process_index"):
        process_range(3, 2, 2)
