"""Bad data fails early and clearly, or is skipped (issue 9.8 / 9.9): missing or empty image folders and saved
datasets, a 1x40000 PNG (counted as bad, not resized into gigabytes), a trailing batch of only bad images (skipped
by the trainer), and validation splits too small for an FID."""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path

import datasets
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from rae_hf.callbacks import RFIDCallback
from rae_hf.data import (
    MAX_ASPECT_RATIO,
    BadImageError,
    DataArguments,
    ImageCollator,
    ImageExampleTransform,
    build_image_transform,
    load_image_splits,
    load_rgb_image,
    with_image_transform,
)
from rae_hf.trainers.base_config import BaseTrainingArguments
from rae_hf.trainers.base_trainer import BaseTrainer


def png_bytes(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 10, 10)).save(buffer, "PNG")
    return buffer.getvalue()


def write_images(folder: Path, count: int, size: tuple[int, int] = (20, 16)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        Image.new("RGB", size, (index * 20, 90, 160)).save(folder / f"img_{index}.png")
    return folder


# ----- 9.8: folders and saved datasets ------------------------------------------------------------------------------
def test_missing_or_empty_image_folders_name_the_argument(tmp_path):
    train = write_images(tmp_path / "train", 4)
    with pytest.raises(FileNotFoundError, match=rf"--train_dir {tmp_path / 'nope'}: no such folder"):
        load_image_splits(DataArguments(train_dir=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=rf"--train_dir {tmp_path / 'empty'} holds no image file"):
        load_image_splits(DataArguments(train_dir=str(tmp_path / "empty")))
    (tmp_path / "notes" / "sub").mkdir(parents=True)
    (tmp_path / "notes" / "sub" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match=rf"--validation_dir {tmp_path / 'notes'} holds no image file"):
        load_image_splits(DataArguments(train_dir=str(train), validation_dir=str(tmp_path / "notes")))
    with pytest.raises(FileNotFoundError, match="--validation_dir"):
        load_image_splits(DataArguments(train_dir=str(train), validation_dir=str(tmp_path / "gone")))
    nested = write_images(tmp_path / "nested" / "class_a" / "deeper", 3, size=(20, 16))
    splits = load_image_splits(
        DataArguments(train_dir=str(tmp_path / "nested"), cache_dir=str(tmp_path / "cache"), validation_fraction=0.34)
    )
    assert nested.is_dir() and len(splits["train"]) + len(splits["validation"]) == 3


def test_empty_saved_datasets_name_the_path(tmp_path):
    features = datasets.Features({"image": datasets.Image()})
    empty = datasets.Dataset.from_dict({"image": []}, features=features)
    empty.save_to_disk(str(tmp_path / "single"))
    with pytest.raises(ValueError, match=rf"The saved dataset {tmp_path / 'single'} \(--dataset_name\) is empty"):
        load_image_splits(DataArguments(dataset_name=str(tmp_path / "single")))
    image = Image.new("RGB", (8, 8))
    full = datasets.Dataset.from_dict({"image": [image, image]}, features=features)
    datasets.DatasetDict({"train": full, "validation": empty}).save_to_disk(str(tmp_path / "dict"))
    with pytest.raises(ValueError, match=r"its split\(s\) \['validation'\] hold\(s\) no rows"):
        load_image_splits(DataArguments(dataset_name=str(tmp_path / "dict")))


# ----- 9.9: extreme aspect ratios -----------------------------------------------------------------------------------
def test_thin_png_is_a_bad_image_before_any_resize():
    thin = png_bytes(1, 40_000)
    assert len(thin) < 1000  # a tiny file...
    start = time.perf_counter()
    with pytest.raises(BadImageError, match=r"<\d+ bytes in memory> of size 1x40000 has an aspect ratio of 40000:1"):
        load_rgb_image({"bytes": thin, "path": None})
    assert time.perf_counter() - start < 1.0  # ...refused from its header (resizing it would need ~18 GB)
    transform = ImageExampleTransform(build_image_transform(64, train=True), "image")
    assert transform({"image": {"bytes": thin, "path": "thin.png"}})["pixel_values"] is None
    assert transform.num_bad == 1
    limit = int(MAX_ASPECT_RATIO)
    assert load_rgb_image({"bytes": png_bytes(limit, 1), "path": None}).size == (limit, 1)
    with pytest.raises(BadImageError, match="aspect ratio"):
        load_rgb_image({"bytes": png_bytes(limit + 1, 1), "path": None})
    assert load_rgb_image({"bytes": png_bytes(1, 40_000), "path": None}, max_aspect_ratio=None).size == (1, 40_000)


# ----- 9.9: a trailing batch of only bad images ---------------------------------------------------------------------
class MeanModel(nn.Module):
    """Loss = squared distance of the pixel mean to a learned scalar (no host sync, any batch size >= 1)."""

    def __init__(self):
        super().__init__()
        self.value = nn.Parameter(torch.zeros(()))

    def forward(self, pixel_values: torch.Tensor, **unused) -> dict:
        if pixel_values.shape[0] == 0:
            raise AssertionError("the model got an empty batch")
        return {"loss": (pixel_values.mean() - self.value).square()}


def test_a_batch_of_only_bad_images_is_skipped_not_fatal(tmp_path):
    good = [{"bytes": png_bytes(12, 10), "path": f"good_{i}.png"} for i in range(4)]
    cells = [*good, {"bytes": b"junk", "path": "bad.png"}]
    dataset = datasets.Dataset.from_dict({"image": cells}, features=datasets.Features({"image": datasets.Image()}))
    dataset = with_image_transform(dataset.cast_column("image", datasets.Image(decode=False)), _eval(), "image")
    collator = ImageCollator(max_bad_image_fraction=0.05)  # 1 bad of 5 is under max(8, 5%)
    batches = list(DataLoader(dataset, batch_size=4, collate_fn=collator))
    assert [batch["pixel_values"].shape[0] for batch in batches] == [4, 0]

    args = BaseTrainingArguments(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=1,  # wherever the shuffle puts the bad image, its batch holds only it
        num_train_epochs=2,
        learning_rate=0.1,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = BaseTrainer(model=MeanModel(), args=args, train_dataset=dataset, data_collator=collator)
    trainer.train()
    assert trainer.state.global_step == 8  # 4 steps per epoch: the empty batch did not become a step
    assert int(trainer._skipped_images) == 2  # once per epoch


def _eval():
    return build_image_transform(8, train=False)


# ----- 9.9: validation splits too small for an FID ------------------------------------------------------------------
def test_rfid_refuses_one_validation_image_and_warns_below_the_minimum(caplog):
    one = [{"pixel_values": torch.zeros(3, 8, 8)}]
    with pytest.raises(ValueError, match="An FID needs at least 2 images, but the validation split gives 1"):
        RFIDCallback(None, evaluator=None, eval_dataset=one, collate_fn=None, batch_size=1)
    with caplog.at_level(logging.WARNING, logger="rae_hf.metrics.fid"):
        RFIDCallback(None, evaluator=None, eval_dataset=one * 3, collate_fn=None, batch_size=1)
    assert "The FID over 3 images of the validation split is mostly noise" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rae_hf.metrics.fid"):
        RFIDCallback(None, evaluator=None, eval_dataset=one * 80, collate_fn=None, batch_size=1, num_samples=60)
    assert caplog.text == ""
    with pytest.raises(ValueError, match="gives 1"):  # num_samples caps what is scored
        RFIDCallback(None, evaluator=None, eval_dataset=one * 80, collate_fn=None, batch_size=1, num_samples=1)
