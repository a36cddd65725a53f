"""run_rae.py end to end on an image folder with odd images: train, checkpoints, resume, outputs, latent stats."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
import wandb
from PIL import Image
from torchmetrics.image.fid import FrechetInceptionDistance

from rae_hf.data import DataArguments, build_image_transform, load_image_splits, with_image_transform
from rae_hf.metrics import InceptionFeatureExtractor, save_random_inception_weights
from rae_hf.models.rae import RAEModel
from rae_hf.models.rae.latent_stats import RunningMoments
from rae_hf.scripts import run_rae
from rae_hf.tools.make_dummy_dataset import write_dummy_dataset
from rae_hf.tools.make_tiny_models import make_tiny_discriminator, make_tiny_encoder


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, str]:
    """Tiny encoder + discriminator checkpoints and an image folder with corrupt, grayscale, RGBA, 16-bit files."""
    root = tmp_path_factory.mktemp("assets")
    data = root / "data"
    write_dummy_dataset(str(data), {"train": 12, "validation": 4}, image_size=40, fmt="imagefolder", seed=0)
    odd = data / "train" / "circle"
    Image.fromarray(np.full((40, 40), 128, np.uint8), "L").save(odd / "gray.png")
    Image.fromarray(np.zeros((40, 40, 4), np.uint8), "RGBA").save(odd / "transparent.png")
    Image.fromarray(np.full((40, 40), 40000, np.uint16)).save(odd / "sixteen_bit.png")
    (odd / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    return {
        "encoder": make_tiny_encoder(str(root / "encoder"), image_size=32, patch_size=8, hidden_size=32, num_layers=2),
        "discriminator": make_tiny_discriminator(str(root / "discriminator"), image_size=16, hidden_size=16),
        "inception": save_random_inception_weights(root / "inception.pth"),
        "train_dir": str(data / "train"),
        "validation_dir": str(data / "validation"),
    }


def _argv(assets: dict, output_dir: Path, *extra: str) -> list[str]:
    return [
        "--model_name_or_path",
        assets["encoder"],
        "--train_dir",
        assets["train_dir"],
        "--validation_dir",
        assets["validation_dir"],
        "--discriminator_name_or_path",
        assets["discriminator"],
        "--disc_input_size",
        "16",
        "--decoder_hidden_size",
        "32",
        "--decoder_num_hidden_layers",
        "2",
        "--decoder_num_attention_heads",
        "2",
        "--decoder_intermediate_size",
        "64",
        "--decoder_patch_size",
        "8",
        "--lpips_pretrained_backbone",
        "false",
        "--gan_schedule_unit",
        "step",
        "--disc_upd_start",
        "1",
        "--disc_start",
        "2",
        "--per_device_train_batch_size",
        "4",
        "--per_device_eval_batch_size",
        "4",
        "--logging_steps",
        "1",
        "--save_steps",
        "2",
        "--report_to",
        "none",
        "--use_cpu",
        "true",
        "--dataloader_num_workers",
        "0",
        "--output_dir",
        str(output_dir),
        "--num_sample_images",
        "4",
        "--inception_weights",
        assets["inception"],
        "--fid_steps",
        "4",
        "--fid_at_epoch_end",
        "false",
        "--sample_every",
        "2",
        *extra,
    ]


@pytest.mark.slow
def test_train_save_resume_and_outputs(assets, tmp_path):
    output = tmp_path / "run"
    run_rae.main(_argv(assets, output, "--max_steps", "4"))
    files = set(os.listdir(output))
    assert {
        "config.json",
        "model.safetensors",
        "modeling_rae.py",
        "configuration_rae.py",
        "README.md",
        "reconstructions.png",
        "run_config.json",
        "checkpoint-2",
        "checkpoint-4",
    } <= files
    run_config = json.loads((output / "run_config.json").read_text())
    assert run_config["ModelArguments"]["decoder_hidden_size"] == 32
    assert run_config["RAETrainingArguments"]["disc_start"] == 2
    card = (output / "README.md").read_text()
    assert "dinov2_with_registers" in card and "loss_l1" in card and assets["train_dir"] in card
    assert Image.open(output / "reconstructions.png").size[0] > 64

    history = json.loads((output / "trainer_state.json").read_text())["log_history"]
    skipped = [entry["skipped_images_total"] for entry in history if "loss" in entry]
    assert skipped[-1] == 1  # the corrupt file, read once: 16 files -> 4 steps of 4 = exactly one epoch
    assert any("loss_gan" in entry for entry in history)
    rfid = [entry for entry in history if "eval_rfid" in entry]
    assert [entry["step"] for entry in rfid] == [4]
    assert all(entry["eval_num_samples"] == 4 and entry["eval_psnr"] > 0 for entry in rfid)
    assert rfid[-1]["eval_rfid_best"] == min(entry["eval_rfid"] for entry in rfid)
    assert sorted(os.listdir(output / "samples")) == ["step_0000002.png", "step_0000004.png"]

    model = RAEModel.from_pretrained(output).eval()
    assert model(torch.rand(1, 3, 32, 32)).reconstruction.shape == (1, 3, 32, 32)

    check_evaluation_modes(assets, output, callback_rfid=rfid[-1], tmp_path=tmp_path)

    run_rae.main(_argv(assets, output, "--max_steps", "6", "--resume_from_checkpoint", "last"))
    state = json.loads((output / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    assert [e["step"] for e in state["log_history"] if "loss" in e][-2:] == [5, 6]


def test_resume_last_without_checkpoint_is_a_clear_error(assets, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run_rae.main(_argv(assets, tmp_path, "--max_steps", "1", "--resume_from_checkpoint", "last"))


def test_compute_latent_stats_matches_direct_computation(assets, tmp_path):
    run_rae.main(_argv(assets, tmp_path, "--compute_latent_stats", "true"))
    model = RAEModel.from_pretrained(tmp_path).eval()
    assert model.config.normalize_latents

    data_args = DataArguments(train_dir=assets["train_dir"], validation_dir=assets["validation_dir"])
    train = with_image_transform(load_image_splits(data_args)["train"], build_image_transform(32, train=False), "image")
    images = torch.stack([e["pixel_values"] for e in train if e["pixel_values"] is not None])
    tokens = model.encode_tokens(images).double()  # [N, L, C]
    grid = model.config.latent_grid_size
    latents = tokens.transpose(1, 2).reshape(len(images), -1, grid, grid)
    torch.testing.assert_close(model.latents_mean.double(), latents.mean(0), rtol=0, atol=1e-5)
    torch.testing.assert_close(model.latents_var.double(), latents.var(0, unbiased=False), rtol=0, atol=1e-5)
    assert images.shape[0] == 15  # 12 + gray + transparent + 16-bit; the corrupt file is skipped
    moments = RunningMoments()
    moments.update(latents[:7])
    moments.update(latents[7:])
    torch.testing.assert_close(moments.variance, latents.var(0, unbiased=False))


@pytest.mark.slow
def test_streaming_training(assets, tmp_path):
    """--streaming reads the folder as an iterable dataset; step-based schedule, max_steps bounded."""
    run_rae.main(_argv(assets, tmp_path, "--streaming", "true", "--max_steps", "2", "--save_strategy", "no"))
    history = json.loads((tmp_path / "trainer_state.json").read_text())["log_history"]
    assert [e["step"] for e in history if "loss" in e] == [1, 2]
    assert (tmp_path / "model.safetensors").exists()


def check_evaluation_modes(assets: dict, trained: Path, callback_rfid: dict, tmp_path: Path) -> None:
    """--do_eval on the published model gives the callback's last (EMA) values and a direct torchmetrics FID;
    --compute_fid_stats then --fid_reference_stats reproduce it; --save_reconstructions writes PNGs and an .npz."""
    evaluation = tmp_path / "eval"
    run_rae.main(
        _argv(assets, evaluation, "--do_eval", "true", "--save_reconstructions", "true")
        + ["--model_name_or_path", str(trained)]
    )
    results = json.loads((evaluation / "eval_results.json").read_text())
    assert results["num_samples"] == 4
    for key in ("rfid", "psnr", "ssim"):
        assert results[key] == pytest.approx(callback_rfid[f"eval_{key}"], rel=1e-4, abs=1e-6), key
    saved = np.load(evaluation / "reconstructions" / "reconstructions_rank0.npz")["arr_0"]
    assert saved.shape == (4, 32, 32, 3) and saved.dtype == np.uint8
    assert len(list((evaluation / "reconstructions").glob("*.png"))) == 4

    data_args = DataArguments(train_dir=assets["train_dir"], validation_dir=assets["validation_dir"])
    validation = with_image_transform(
        load_image_splits(data_args)["validation"], build_image_transform(32, train=False), "image"
    )
    images = torch.stack([e["pixel_values"] for e in validation])
    model = RAEModel.from_pretrained(trained).eval()
    with torch.no_grad():
        reconstructions = model(images).reconstruction.clamp(0, 1)
    direct = FrechetInceptionDistance(feature=InceptionFeatureExtractor(assets["inception"]), normalize=True)
    direct.update(images, real=True)
    direct.update(reconstructions, real=False)
    assert results["rfid"] == pytest.approx(float(direct.compute()), rel=1e-3)

    stats = tmp_path / "val_stats.npz"
    run_rae.main(_argv(assets, tmp_path / "stats", "--compute_fid_stats", str(stats)))
    with_reference = tmp_path / "eval_ref"
    run_rae.main(
        _argv(assets, with_reference, "--do_eval", "true", "--fid_reference_stats", str(stats))
        + ["--model_name_or_path", str(trained)]
    )
    assert json.loads((with_reference / "eval_results.json").read_text())["rfid"] == pytest.approx(
        results["rfid"], rel=1e-6
    )


@pytest.mark.slow
def test_wandb_offline_dashboard(assets, tmp_path, monkeypatch):
    """--report_to wandb (offline): the run holds every loss term, rFID/PSNR/SSIM, the config, reconstruction images
    and, with WANDB_LOG_MODEL=end, the final model as an artifact."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_LOG_MODEL", "end")
    run_rae.main(
        _argv(
            assets,
            tmp_path / "run",
            "--max_steps",
            "4",
            "--report_to",
            "wandb",
            "--save_strategy",
            "no",
            "--run_name",
            "offline-test",
        )
    )
    # the run's folder (wandb keeps the directory of the first run set up in this process, so WANDB_DIR may not apply)
    run_dir = Path(wandb.run.dir).parent
    wandb.finish()  # transformers leaves the run open until the process exits
    assert run_dir.name.startswith("offline-run-")
    (records,) = run_dir.glob("run-*.wandb")
    keys = [
        "train/loss_l1",
        "train/loss_lpips",
        "train/loss_gan",
        "train/d_weight",
        "train/loss_disc",
        "train/logits_real",
        "train/learning_rate",
        "train/disc_learning_rate",
        "eval/rfid",
        "eval/psnr",
        "eval/ssim",
        "disc_upd_start",
        "decoder_hidden_size",
    ]
    deadline = time.monotonic() + 60  # the wandb service may still be writing the last records
    while (missing := [k for k in keys if k.encode() not in records.read_bytes()]) and time.monotonic() < deadline:
        time.sleep(1)
    assert not missing, missing
    data = records.read_bytes()
    assert list((run_dir / "files" / "media" / "images").glob("reconstructions_*.png"))
    assert b"model-offline-test" in data or list(run_dir.rglob("*.safetensors")), "final model artifact missing"


def test_a_second_run_into_a_finished_output_dir_is_refused_before_writing(assets, tmp_path):
    """Before: the second run replaced model.safetensors and run_config.json and mixed its checkpoints in."""
    run_rae.main(_argv(assets, tmp_path, "--max_steps", "1", "--fid_steps", "0", "--sample_every", "0"))
    model, config = (tmp_path / "model.safetensors").read_bytes(), (tmp_path / "run_config.json").read_text()
    with pytest.raises(FileExistsError, match="overwrite_output_dir"):
        run_rae.main(_argv(assets, tmp_path, "--max_steps", "2", "--learning_rate", "0.01"))
    assert (tmp_path / "model.safetensors").read_bytes() == model
    assert (tmp_path / "run_config.json").read_text() == config


@pytest.mark.slow
def test_resume_from_a_mid_epoch_checkpoint_equals_the_uninterrupted_run(assets, tmp_path):
    """16 files, batch 4: checkpoint-3 is mid-epoch. Before: 71/151 tensors differed (random crops of the next batch
    were drawn before the RNG state was restored); now augmentations depend on (seed, epoch, index) only."""
    common = ("--max_steps", "6", "--save_steps", "3", "--fid_steps", "0", "--sample_every", "0", "--disc_start", "1")
    run_rae.main(_argv(assets, tmp_path / "full", *common))
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(tmp_path / "full" / "checkpoint-3", resumed / "checkpoint-3")
    run_rae.main(_argv(assets, resumed, *common, "--resume_from_checkpoint", "last"))
    expected = safetensors.torch.load_file(tmp_path / "full" / "model.safetensors")
    actual = safetensors.torch.load_file(resumed / "model.safetensors")
    assert expected.keys() == actual.keys()
    assert [k for k in expected if not torch.equal(expected[k], actual[k])] == []
