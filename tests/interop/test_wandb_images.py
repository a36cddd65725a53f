"""Images sent to W&B and TensorBoard are the pixels of the grid PNG written to disk (not a float array that wandb
casts to 0/1, i.e. a black image)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
import wandb
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from rae_hf.callbacks import ImageEvaluationCallback
from rae_hf.trainers.base_config import BaseTrainingArguments
from rae_hf.trainers.base_trainer import BaseTrainer
from rae_hf.visualization import image_grid, to_uint8


class ScalarModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.value = nn.Parameter(torch.zeros(()))

    def forward(self, pixel_values: torch.Tensor, **unused) -> dict:
        return {"loss": (pixel_values.mean() - self.value).square()}


class Images(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> dict:
        return {"pixel_values": torch.full((3, 4, 4), index / 4)}


def test_to_uint8_rounds_like_the_png_writer():
    image = torch.tensor([0.0, 0.001, 0.5, 0.999, 1.0, 1.5, -0.2]).view(1, 1, 7).expand(3, 1, 7)
    assert to_uint8(image)[0, :, 0].tolist() == [0, 0, 128, 255, 255, 255, 0]


@pytest.mark.slow
def test_logged_images_equal_the_grid_png(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    args = BaseTrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=2,
        max_steps=2,
        logging_steps=1,
        save_strategy="no",
        report_to=["wandb", "tensorboard"],
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = BaseTrainer(model=ScalarModel(), args=args, train_dataset=Images())
    images = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    grid = image_grid(images, columns=3, captions=[f"class {i}" for i in range(6)])
    callback = ImageEvaluationCallback(
        trainer, lambda model: {"fid": 1.0}, "fid", eval_steps=0, at_epoch_end=False, sample_every=0,
        grid_fn=lambda model: grid,
    )  # fmt: skip
    trainer.add_callback(callback)
    trainer.train()
    files = Path(wandb.run.dir)  # the run's files folder (wandb's settings may come from an earlier run's set-up)
    wandb.finish()

    png = np.asarray(Image.open(tmp_path / "out" / "samples" / "step_0000002.png").convert("RGB"))
    assert png.shape[:2] == tuple(grid.shape[1:]) and png.std() > 20  # a real picture, not a black frame
    logged = sorted(files.glob("media/images/samples_*.png"))
    assert len(logged) == 1  # step 2: a sample step and the last one, logged once
    for path in logged:
        np.testing.assert_array_equal(np.asarray(Image.open(path).convert("RGB")), png)

    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    events.Reload()
    (summary,) = events.Images("samples")  # the last step's grid reaches TensorBoard before its writer closes
    board = np.asarray(Image.open(io.BytesIO(summary.encoded_image_string)).convert("RGB"))
    np.testing.assert_array_equal(board, png)
