"""run_dino_pretrain.py on bad input and reruns (issue 20, points 2 and 9): a refused rerun writes nothing, a bad
image among the first training images is skipped and counted (training, crop picture), and the data check reports
bad images in sentences instead of a traceback."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest
import torch

from rae_hf.data import DataArguments, load_image_splits, with_image_transform
from rae_hf.data.multicrop import MultiCropCollator, MultiCropTransform, first_views, multicrop_spec
from rae_hf.scripts.run_dino_pretrain import main
from rae_hf.tools.toy_textures import make_toy_textures

TINY = [
    "--backbone_size", "tiny", "--hidden_size", "32", "--num_hidden_layers", "2", "--num_attention_heads", "2",
    "--patch_size", "4", "--head_out_dim", "64", "--head_hidden_dim", "32", "--head_bottleneck_dim", "16",
    "--multicrop_preset", "cifar", "--num_local_crops", "2", "--per_device_train_batch_size", "8",
    "--report_to", "none", "--use_cpu", "true", "--save_strategy", "no", "--disable_tqdm", "true", "--seed", "0",
    "--dataloader_num_workers", "0", "--epoch_length", "1",
]  # fmt: skip


def _textures(root: Path, bad: int = 0) -> list[str]:
    """Toy textures whose first `bad` training images (in folder order) are not images."""
    make_toy_textures(str(root), per_class=12, validation_per_class=6, size=36)
    for path in sorted((root / "train").glob("*/*.png"))[:bad]:
        path.write_bytes(b"not an image")
    return ["--train_dir", str(root / "train"), "--validation_dir", str(root / "validation")]


def _digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under `folder` by relative path."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_refused_rerun_changes_nothing(tmp_path) -> None:
    """A finished run (backbone_init/, crops.png, run_config.json, probe/) rerun with another lr and seed and no
    --overwrite_output_dir is refused before any file is written."""
    data = _textures(tmp_path / "textures")
    knn = ["--knn_train_dir", data[1], "--knn_eval_dir", data[3], "--probe_before_after", "true"]
    output = tmp_path / "run"
    main([*TINY, *data, *knn, "--max_steps", "1", "--output_dir", str(output)])
    assert {"run_config.json", "crops.png", "backbone_init/config.json"} <= set(_digests(output))
    before = _digests(output)
    rerun = [*TINY, *data, *knn, "--max_steps", "1", "--output_dir", str(output), "--learning_rate", "0.5"]
    with pytest.raises(FileExistsError, match=r"finished run .*Nothing was written"):
        main([*rerun, "--seed", "3"])
    assert _digests(output) == before
    assert json.loads((output / "run_config.json").read_text())["DinoTrainingArguments"]["seed"] == 0


def test_bad_first_training_image_is_skipped_and_counted(tmp_path, caplog) -> None:
    """The first training image is not an image: the crop picture and training (one batch of all 24 images) skip
    it, and the logs count it."""
    output = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        main([*TINY, *_textures(tmp_path / "textures", bad=1), "--max_steps", "1", "--logging_steps", "1",
              "--per_device_train_batch_size", "24", "--output_dir", str(output)])  # fmt: skip
    assert "Crop picture: skipped 1 undecodable image(s)" in caplog.text and "0000.png" in caplog.text
    rows = [line.split(",") for line in (output / "logs.csv").read_text().splitlines()[1:]]
    skipped = [int(float(row[3])) for row in rows if row[2] == "skipped_images_total"]
    assert skipped and skipped[-1] >= 1
    assert (output / "crops.png").is_file() and (output / "model.safetensors").is_file()


def test_crop_picture_views_skip_bad_images_like_training(tmp_path) -> None:
    """`first_views` keeps the first 4 decodable images (the bad one is counted, not shown) with their views."""
    data = _textures(tmp_path / "textures", bad=1)
    split = load_image_splits(DataArguments(train_dir=data[1], validation_dir=data[3]))["train"]
    spec = multicrop_spec("cifar", num_local_crops=2)
    dataset = with_image_transform(split, MultiCropTransform(spec), "image")
    batch = first_views(dataset, 4, MultiCropCollator(None))
    assert int(batch["num_skipped"]) == 1
    assert batch["global_crops"].shape == (8, 3, 32, 32) and batch["local_crops"].shape == (8, 3, 16, 16)
    assert torch.isfinite(batch["global_crops"]).all()


def test_check_data_pipeline_reports_a_bad_image(tmp_path, capsys) -> None:
    output = tmp_path / "check"
    data = _textures(tmp_path / "textures", bad=1)
    result = main([*TINY, *data, "--output_dir", str(output), "--check_data_pipeline", "true"])
    out = capsys.readouterr().out
    assert result == {"check_passed": True} and (output / "crops.png").is_file()
    assert "skipped 1 undecodable image(s)" in out
    assert "images checked could not be decoded" in out and "Data pipeline check passed" in out


def test_check_data_pipeline_fails_clearly_on_too_many_bad_images(tmp_path, capsys) -> None:
    """Ten unreadable files in front: the check names the problem and exits 1; no traceback escapes."""
    data = _textures(tmp_path / "textures", bad=10)
    with pytest.raises(SystemExit) as exit_info:
        main([*TINY, *data, "--output_dir", str(tmp_path / "check"), "--check_data_pipeline", "true"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 1
    assert "could not be decoded" in out and "Crop picture not saved" in out and "check FAILED" in out


def test_resume_last_into_an_empty_folder_is_an_error_and_writes_nothing(tmp_path) -> None:
    data = _textures(tmp_path / "textures")
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        main([*TINY, *data, "--output_dir", str(tmp_path / "run"), "--resume_from_checkpoint", "last"])
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
