"""Tests of the shared image-data pipeline (rae_hf.data) and the dataset tools (rae_hf.tools)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import io
import logging
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from transformers import HfArgumentParser

from rae_hf.data import (
    BadImageError,
    DataArguments,
    ImageCollator,
    ImageExampleTransform,
    build_image_transform,
    is_empty_batch,
    load_image_splits,
    load_rgb_image,
    with_image_transform,
)
from rae_hf.tools import imagefolder_to_hf, make_dummy_dataset

SIZE = 16


# ---------------------------------------------------------------- helpers


def _encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def _solid(color: tuple[int, int, int], size: tuple[int, int] = (24, 20)) -> Image.Image:
    return Image.new("RGB", size, color)


def _write_imagefolder(root: Path, num_good: int, bad: dict[str, bytes] | None = None) -> Path:
    """``num_good`` PNGs spread over classes a/b plus the given corrupt files in class a."""
    for index in range(num_good):
        class_dir = root / "ab"[index % 2]
        class_dir.mkdir(parents=True, exist_ok=True)
        _solid((index * 10 % 256, 50, 200)).save(class_dir / f"img_{index:03d}.png")
    for name, payload in (bad or {}).items():
        (root / "a").mkdir(parents=True, exist_ok=True)
        (root / "a" / name).write_bytes(payload)
    return root


def _truncated_png() -> bytes:
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    data = _encode(noisy)
    return data[: len(data) // 2]


def _save_indexed_dataset(path: Path, num: int) -> Path:
    """A save_to_disk folder with only a train split and an ``idx`` column."""
    images = [image for image, _ in make_dummy_dataset.make_dummy_images(num, SIZE, seed=1)]
    features = datasets.Features({"image": datasets.Image(), "idx": datasets.Value("int64")})
    train = datasets.Dataset.from_dict({"image": images, "idx": list(range(num))}, features=features)
    datasets.DatasetDict({"train": train}).save_to_disk(str(path))
    return path


def _ids(split: datasets.Dataset | datasets.IterableDataset) -> list[int]:
    return [example["idx"] for example in split]


# ---------------------------------------------------------------- images


def _image(mode: str, pixel: object, **info: object) -> Image.Image:
    image = Image.new(mode, (4, 3), pixel)
    image.info.update(info)
    return image


def _palette(transparent: bool) -> Image.Image:
    image = Image.new("P", (4, 3), 1)
    image.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    if transparent:
        image.info["transparency"] = 1
    return image


MODE_CASES = {
    "RGB": (_image("RGB", (10, 20, 30)), (10, 20, 30), "PNG"),
    "L": (_image("L", 100), (100, 100, 100), "PNG"),
    "1-white": (_image("1", 1), (255, 255, 255), "PNG"),
    "1-black": (_image("1", 0), (0, 0, 0), "PNG"),
    "P": (_palette(transparent=False), (10, 20, 30), "PNG"),
    "P-transparent": (_palette(transparent=True), (255, 255, 255), "PNG"),
    "RGBA-transparent": (_image("RGBA", (255, 0, 0, 0)), (255, 255, 255), "PNG"),
    "RGBA-opaque": (_image("RGBA", (10, 20, 30, 255)), (10, 20, 30), "PNG"),
    "RGBA-half": (_image("RGBA", (0, 0, 0, 128)), (127, 127, 127), "PNG"),
    "LA-transparent": (_image("LA", (0, 0)), (255, 255, 255), "PNG"),
    "CMYK-white": (_image("CMYK", (0, 0, 0, 0)), (255, 255, 255), "TIFF"),
    "CMYK-cyan": (_image("CMYK", (255, 0, 0, 0)), (0, 255, 255), "TIFF"),
    "I;16-max": (_image("I;16", 65535), (255, 255, 255), "PNG"),
    "I;16-mid": (_image("I;16", 25700), (100, 100, 100), "PNG"),
    "I;16B": (_image("I;16B", 25700), (100, 100, 100), "TIFF"),
    "I": (_image("I", 65535), (255, 255, 255), "TIFF"),
    "I-mid": (_image("I", 25700), (100, 100, 100), "TIFF"),
    "F-unit": (_image("F", 0.5), (128, 128, 128), "TIFF"),
    "F-255": (_image("F", 200.0), (200, 200, 200), "TIFF"),
}


@pytest.mark.parametrize("name", list(MODE_CASES))
def test_every_mode_converts_to_rgb_uint8(name: str) -> None:
    source, expected, fmt = MODE_CASES[name]
    data = _encode(source, fmt)
    for value in (source, {"bytes": data, "path": None}):
        image = load_rgb_image(value)
        assert image.mode == "RGB"
        assert image.size == source.size
        array = np.asarray(image)
        assert array.dtype == np.uint8
        np.testing.assert_allclose(array[0, 0], expected, atol=1)
        assert (array == array[0, 0]).all()


def test_load_rgb_image_sources_and_exif(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    _solid((1, 2, 3)).save(path)
    for value in (str(path), path, {"bytes": None, "path": str(path)}):
        assert load_rgb_image(value).getpixel((0, 0)) == (1, 2, 3)
    rotated = Image.new("RGB", (40, 20))
    exif = rotated.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees
    assert load_rgb_image({"bytes": _encode_with_exif(rotated, exif), "path": None}).size == (20, 40)


def _encode_with_exif(image: Image.Image, exif: Image.Exif) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ({"bytes": _truncated_png(), "path": "cut.png"}, "cut.png"),
        ({"bytes": b"\x00garbage" * 50, "path": "noise.jpg"}, "noise.jpg"),
        ({"bytes": b"", "path": None}, "0 bytes"),
        ({"bytes": None, "path": "/nonexistent/missing.png"}, "missing.png"),
        ({"bytes": None, "path": None}, "empty image cell"),
        (Image.new("RGB", (0, 0)), "zero size"),
    ],
)
def test_bad_images_raise_bad_image_error(value: object, fragment: str) -> None:
    with pytest.raises(BadImageError, match=fragment):
        load_rgb_image(value)


# ---------------------------------------------------------------- transforms


def test_train_transform_shape_range_and_rng() -> None:
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    transform = build_image_transform(32, train=True)
    torch.manual_seed(0)
    first = transform(image)
    torch.manual_seed(0)
    assert torch.equal(first, transform(image))
    assert first.shape == (3, 32, 32)
    assert first.dtype == torch.float32
    assert first.min() >= 0.0
    assert first.max() <= 1.0
    assert first.max() > 0.5
    crops = {transform(image).sum().item() for _ in range(8)}
    assert len(crops) > 1  # random crop of the 48-pixel resize


def test_eval_transform_is_deterministic_center_crop() -> None:
    image = _solid((255, 0, 0), size=(64, 40))
    transform = build_image_transform(32, resize_size=100, train=False)
    out = transform(image)
    assert out.shape == (3, 32, 32)
    assert torch.equal(out, transform(image))
    assert torch.allclose(out[0], torch.ones(32, 32))
    assert out[1:].abs().max() == 0
    with pytest.raises(ValueError, match="resize_size"):
        build_image_transform(32, resize_size=16)


# ---------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({}, "exactly one"),
        ({"dataset_name": "x", "train_dir": "y"}, "exactly one"),
        ({"dataset_name": "x", "validation_dir": "y"}, "needs --train_dir"),
        ({"train_dir": "x", "validation_fraction": 1.0}, "validation_fraction"),
        ({"train_dir": "x", "max_bad_image_fraction": -0.1}, "max_bad_image_fraction"),
        ({"train_dir": "x", "max_train_samples": 0}, "max_train_samples"),
        ({"train_dir": "x", "image_size": 64, "resize_size": 32}, "resize_size"),
    ],
)
def test_data_arguments_validation(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        DataArguments(**kwargs)


def test_data_arguments_parse_from_command_line() -> None:
    (args,) = HfArgumentParser(DataArguments).parse_args_into_dataclasses(
        ["--train_dir", "d", "--image_size", "128", "--streaming", "--max_train_samples", "5"]
    )
    assert args.train_dir == "d"
    assert args.image_size == 128
    assert args.streaming
    assert args.max_train_samples == 5


# ---------------------------------------------------------------- loading, skipping, collation


def test_corrupt_files_are_skipped_and_counted_with_workers(tmp_path: Path) -> None:
    bad = {"truncated.png": _truncated_png(), "noise.png": os.urandom(300)}
    train_dir = _write_imagefolder(tmp_path / "train", num_good=12, bad=bad)
    validation_dir = _write_imagefolder(tmp_path / "val", num_good=4)
    args = DataArguments(train_dir=str(train_dir), validation_dir=str(validation_dir), cache_dir=str(tmp_path / "c"))
    splits = load_image_splits(args)
    assert (len(splits["train"]), len(splits["validation"])) == (14, 4)
    train = with_image_transform(splits["train"], build_image_transform(SIZE, train=False), "image", ["label"])
    loader = DataLoader(train, batch_size=4, num_workers=2, collate_fn=ImageCollator(0.5))
    batches = list(loader)
    assert sum(batch["pixel_values"].shape[0] for batch in batches) == 12
    assert sum(int(batch["num_skipped"]) for batch in batches) == 2
    for batch in batches:
        assert batch["pixel_values"].shape[1:] == (3, SIZE, SIZE)
        assert batch["pixel_values"].dtype == torch.float32
        assert batch["labels"].dtype == torch.long
        assert len(batch["labels"]) == len(batch["pixel_values"])
        assert set(batch) == {"pixel_values", "num_skipped", "labels"}


def test_too_many_bad_images_raise_through_dataloader() -> None:
    # num_workers=0: after a worker error, torch takes ~5 s to tear the workers down at garbage collection.
    cells = [{"bytes": b"not an image", "path": f"bad_{i}.png"} for i in range(10)]
    cells += [{"bytes": _encode(_solid((0, 0, 0))), "path": f"good_{i}.png"} for i in range(2)]
    features = datasets.Features({"image": datasets.Image(decode=False)})
    dataset = datasets.Dataset.from_dict({"image": cells}, features=features)
    dataset = with_image_transform(dataset, build_image_transform(SIZE, train=False), "image")
    loader = DataLoader(dataset, batch_size=12, num_workers=0, collate_fn=ImageCollator(0.05))
    with pytest.raises(BadImageError, match=r"10 of 12 images could not be decoded \(> max_bad_image_fraction=0.05\)"):
        next(iter(loader))


def test_collator_fraction_rule_empty_batch_and_extra_keys() -> None:
    good = {"pixel_values": torch.zeros(3, 4, 4), "label": 3}
    bad = {"pixel_values": None, "label": 1}
    collator = ImageCollator(max_bad_image_fraction=0.1)
    batch = collator([good, bad, good])
    assert batch["pixel_values"].shape == (2, 3, 4, 4)
    assert int(batch["num_skipped"]) == 1
    assert batch["labels"].tolist() == [3, 3]
    assert batch["num_skipped"].dtype == torch.long
    empty = collator([bad, bad])  # e.g. a trailing batch of bad files: returned empty (skipped by the trainer)
    assert is_empty_batch(empty) and empty["pixel_values"].shape == (0, 3, 4, 4)
    assert int(empty["num_skipped"]) == 2 and empty["labels"].shape == (0,)
    assert not is_empty_batch(batch)
    with pytest.raises(BadImageError, match="All 2 images of a batch could not be decoded before any good one"):
        ImageCollator(max_bad_image_fraction=0.1)([bad, bad])  # no shape to give an empty batch
    for _ in range(5):  # seen 5 + 5 * 100, skipped 3 + 5 * 5: always under max(8, 10% of seen)
        collator([good] * 95 + [bad] * 5)
    with pytest.raises(BadImageError, match=r"78 of 575 images could not be decoded"):
        collator([good] * 20 + [bad] * 50)


def test_bad_image_warnings_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    transform = ImageExampleTransform(build_image_transform(SIZE, train=False), "image")
    with caplog.at_level(logging.WARNING, logger="rae_hf.data.datasets"):
        outputs = [transform({"image": {"bytes": b"junk", "path": f"f{i}.png"}}) for i in range(250)]
    assert all(output == {"pixel_values": None} for output in outputs)
    assert len(caplog.records) == 10 + 2  # first 10, then the 100th and the 200th
    assert "f0.png" in caplog.records[0].getMessage()


def test_missing_image_column_lists_available_columns(tmp_path: Path) -> None:
    train_dir = _write_imagefolder(tmp_path / "train", num_good=4)
    args = DataArguments(train_dir=str(train_dir), image_column_name="img", cache_dir=str(tmp_path / "c"))
    expected = r"'img' not found; available columns: \['image', 'label'\]\. Pass --image_column_name"
    with pytest.raises(ValueError, match=expected):
        load_image_splits(args)


def test_held_out_validation_is_sized_disjoint_and_deterministic(tmp_path: Path) -> None:
    path = str(_save_indexed_dataset(tmp_path / "ds", num=50))
    splits = load_image_splits(DataArguments(dataset_name=path, validation_fraction=0.2), seed=3)
    train, validation = _ids(splits["train"]), _ids(splits["validation"])
    assert (len(train), len(validation)) == (40, 10)
    assert set(train).isdisjoint(validation)
    assert set(train) | set(validation) == set(range(50))
    again = load_image_splits(DataArguments(dataset_name=path, validation_fraction=0.2), seed=3)
    assert _ids(again["validation"]) == validation
    other = load_image_splits(DataArguments(dataset_name=path, validation_fraction=0.2), seed=4)
    assert _ids(other["validation"]) != validation
    limited = load_image_splits(DataArguments(dataset_name=path, max_train_samples=7, max_eval_samples=3), seed=3)
    assert (len(limited["train"]), len(limited["validation"])) == (7, 3)
    assert limited["train"].features["image"] == datasets.Image(decode=False)


def test_streaming_hash_split_is_disjoint_and_deterministic(tmp_path: Path) -> None:
    path = str(_save_indexed_dataset(tmp_path / "ds", num=50))
    args = DataArguments(dataset_name=path, streaming=True, validation_fraction=0.3)
    splits = load_image_splits(args)
    assert isinstance(splits, datasets.IterableDatasetDict)
    train, validation = _ids(splits["train"]), _ids(splits["validation"])
    assert set(train).isdisjoint(validation)
    assert sorted(train + validation) == list(range(50))
    assert 5 <= len(validation) <= 25
    assert sorted(_ids(load_image_splits(args)["validation"])) == sorted(validation)


def test_streaming_imagefolder_yields_tensors(tmp_path: Path) -> None:
    train_dir = _write_imagefolder(tmp_path / "train", num_good=10, bad={"bad.png": b"xx"})
    validation_dir = _write_imagefolder(tmp_path / "val", num_good=4)
    args = DataArguments(
        train_dir=str(train_dir),
        validation_dir=str(validation_dir),
        streaming=True,
        max_eval_samples=2,
        cache_dir=str(tmp_path / "c"),
    )
    splits = load_image_splits(args)
    train = with_image_transform(splits["train"], build_image_transform(SIZE, train=True), "image", ["label"])
    examples = list(train)
    assert set(examples[0]) == {"pixel_values", "label"}
    pixels = [example["pixel_values"] for example in examples if example["pixel_values"] is not None]
    assert all(p.shape == (3, SIZE, SIZE) and p.dtype == torch.float32 for p in pixels)
    assert (len(examples), len(pixels)) == (11, 10)
    batch = next(iter(DataLoader(train, batch_size=4, collate_fn=ImageCollator(0.5))))
    assert batch["pixel_values"].shape[1:] == (3, SIZE, SIZE)
    assert len(list(splits["validation"])) == 2


# ---------------------------------------------------------------- tools


def test_make_dummy_images_are_deterministic_and_structured() -> None:
    first = make_dummy_dataset.make_dummy_images(8, 32, seed=0)
    second = make_dummy_dataset.make_dummy_images(8, 32, seed=0)
    other = make_dummy_dataset.make_dummy_images(8, 32, seed=1)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for (a, _), (b, _) in zip(first, second, strict=True))
    assert not np.array_equal(np.asarray(first[0][0]), np.asarray(other[0][0]))
    assert {label for _, label in first} == set(range(len(make_dummy_dataset.CLASS_NAMES)))
    assert all(image.mode == "RGB" and image.size == (32, 32) for image, _ in first)
    assert np.asarray(first[0][0]).std() > 10  # not a flat image


@pytest.mark.parametrize("fmt", ["imagefolder", "hf"])
def test_make_dummy_dataset_loads_back(tmp_path: Path, fmt: str) -> None:
    out = tmp_path / "dummy"
    make_dummy_dataset.main(
        [
            "--output_dir",
            str(out),
            "--num_train",
            "12",
            "--num_validation",
            "4",
            "--num_test",
            "4",
            "--image_size",
            "24",
            "--format",
            fmt,
        ]
    )
    if fmt == "hf":
        args = DataArguments(dataset_name=str(out))
    else:
        args = DataArguments(
            train_dir=str(out / "train"), validation_dir=str(out / "validation"), cache_dir=str(tmp_path / "c")
        )
    splits = load_image_splits(args)
    assert (len(splits["train"]), len(splits["validation"])) == (12, 4)
    assert "label" in splits["train"].column_names
    assert load_rgb_image(splits["validation"][0]["image"]).size == (24, 24)
    with pytest.raises(FileExistsError):
        make_dummy_dataset.main(["--output_dir", str(out)])


def test_imagefolder_to_hf_embeds_images(tmp_path: Path) -> None:
    train_dir = _write_imagefolder(tmp_path / "train", num_good=6)
    validation_dir = _write_imagefolder(tmp_path / "val", num_good=2)
    out = tmp_path / "converted"
    imagefolder_to_hf.main(
        [
            "--train_dir",
            str(train_dir),
            "--validation_dir",
            str(validation_dir),
            "--output_dir",
            str(out),
            "--cache_dir",
            str(tmp_path / "c"),
        ]
    )
    shutil.rmtree(train_dir)
    shutil.rmtree(validation_dir)
    shutil.rmtree(tmp_path / "c")
    splits = load_image_splits(DataArguments(dataset_name=str(out)))
    assert (len(splits["train"]), len(splits["validation"])) == (6, 2)
    assert splits["train"].features["label"].names == ["a", "b"]
    assert all(load_rgb_image(cell).size == (24, 20) for cell in splits["train"]["image"])
