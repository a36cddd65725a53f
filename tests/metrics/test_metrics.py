"""FID / rFID, PSNR / SSIM, reference statistics, sharding and the rFID evaluator, offline (random Inception)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import itertools
import json
import urllib.error

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import SyntheticImages, launch_two_cpu_processes
from fid_ddp_worker import NUM_IMAGES, evaluate_shard, tiny_feature
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from torchmetrics.image.fid import FrechetInceptionDistance, _compute_fid
from transformers import Dinov2Config, Dinov2Model

import rae_hf.metrics.fid as fid_module
from rae_hf.data import shard_for_process
from rae_hf.evaluation import RFIDEvaluator, load_reference_statistics, save_reference_statistics
from rae_hf.metrics import (
    FIDMetric,
    InceptionFeatureExtractor,
    ReconstructionMetrics,
    frechet_distance,
    save_random_inception_weights,
)

NOISE_STDS = (0.05, 0.1, 0.2, 0.4)


def images(count: int, size: int, seed: int = 0) -> torch.Tensor:
    return SyntheticImages(count=count, size=size, seed=seed).images


def noisy(batch: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    noise = torch.randn(batch.shape, generator=torch.Generator().manual_seed(seed))
    return (batch + std * noise).clamp(0, 1)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Inception on 2 shared, busy cores: one intra-op thread is faster than two fighting other processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def inception_weights(tmp_path_factory) -> str:
    return save_random_inception_weights(tmp_path_factory.mktemp("inception") / "random_inception.pth", seed=0)


@pytest.fixture(scope="module")
def inception_fids(inception_weights) -> dict:
    """FID (default Inception feature) of 5 images against themselves and against noisy copies."""
    real = images(5, 64)
    metric = FIDMetric(inception_weights=inception_weights, reset_real_features=False)
    metric.update(real, real=True)
    metric.update(real, real=False)
    identical = float(metric.compute())
    by_noise = []
    for std in NOISE_STDS:
        metric.reset()
        metric.update(noisy(real, std), real=False)
        by_noise.append(float(metric.compute()))
    return {"identical": identical, "noise": by_noise}


class TinyDinoCLS(nn.Module):
    """CLS token of a tiny random DINOv2 (an FD-DINOv2-style plug-in feature)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        config = Dinov2Config(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
        )
        self.model = Dinov2Model(config).eval()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        pixels = F.interpolate(pixels, size=(32, 32), mode="bicubic", align_corners=False)
        return self.model(pixel_values=(pixels - self.mean) / self.std).last_hidden_state[:, 0]


# ----- Inception feature --------------------------------------------------------------------------------------------
def test_inception_features_are_2048_d_and_rounded_to_uint8(inception_weights):
    extractor = InceptionFeatureExtractor(inception_weights)
    extractor.train()
    assert not extractor.network.training
    batch = images(1, 40)
    with torch.no_grad():
        features = extractor(batch)
        nudged = extractor(((batch * 255).round() - 0.4).clamp(0, 255) / 255)  # rounds back; truncating would not
    assert features.shape == (1, 2048) and features.dtype == torch.float32
    assert torch.isfinite(features).all() and features.std() > 0
    assert torch.equal(features, nudged)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        extractor(batch[:, :1])


def test_inception_weights_errors_are_clear(monkeypatch, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        InceptionFeatureExtractor(tmp_path / "missing.pth")

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(fid_module, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match="--inception_weights"):
        InceptionFeatureExtractor(None)


def test_identical_image_sets_have_zero_fid(inception_fids):
    assert abs(inception_fids["identical"]) < 1e-3


def test_fid_grows_with_reconstruction_noise(inception_fids):
    values = [inception_fids["identical"], *inception_fids["noise"]]
    assert all(a < b for a, b in itertools.pairwise(values)), values


# ----- FIDMetric against torchmetrics, reference statistics ---------------------------------------------------------
def test_fid_metric_equals_torchmetrics_fid_with_the_same_feature():
    feature = tiny_feature()
    real, fake = images(9, 32, seed=1), noisy(images(9, 32, seed=2), 0.1)
    ours = FIDMetric(feature=feature)
    reference = FrechetInceptionDistance(feature=feature, normalize=True)
    for metric in (ours, reference):
        for part in (real[:4], real[4:]):  # uneven batches
            metric.update(part, real=True)
        metric.update(fake, real=False)
    assert float(ours.compute()) == pytest.approx(float(reference.compute()), rel=1e-5)


def test_frechet_distance_equals_torchmetrics_formula():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 128, 300, generator=generator, dtype=torch.float64)
    # full rank: with a singular product torchmetrics' eigvals adds sqrt(rounding noise) of its zero eigenvalues
    sigma1, sigma2 = a @ a.T / 300, b @ b.T / 299
    mu1, mu2 = torch.randn(2, 128, generator=generator, dtype=torch.float64)
    expected = float(_compute_fid(mu1, sigma1, mu2, sigma2))
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-8)
    singular = a[:, :40] @ a[:, :40].T / 40
    assert frechet_distance(mu1.numpy(), singular.numpy(), mu1, singular) == pytest.approx(0, abs=1e-9)
    with pytest.raises(ValueError, match="Feature dimensions differ"):
        frechet_distance(mu1, sigma1, mu2[:10], sigma2[:10, :10])


def test_npz_statistics_round_trip_replace_the_real_side(tmp_path):
    real, fake = images(10, 32, seed=3), noisy(images(10, 32, seed=3), 0.2)
    accumulated = FIDMetric(feature=tiny_feature())
    accumulated.update(real, real=True)
    accumulated.update(fake, real=False)
    mu, sigma = accumulated.real_statistics()
    save_reference_statistics(tmp_path / "ref", mu, sigma)  # written at exactly this path (no ".npz" appended)
    with np.load(tmp_path / "ref", allow_pickle=False) as stats:
        assert sorted(stats.files) == ["mu", "sigma"] and stats["sigma"].dtype == np.float64
    loaded_mu, loaded_sigma = load_reference_statistics(tmp_path / "ref")
    np.testing.assert_array_equal(loaded_mu, mu.numpy())

    given = FIDMetric(feature=tiny_feature())
    given.set_real_statistics(loaded_mu, loaded_sigma, num_samples=10)
    given.update(fake, real=False)
    assert given.reference_num_samples == 10
    assert float(given.compute()) == pytest.approx(float(accumulated.compute()), rel=1e-9)
    assert frechet_distance(loaded_mu, loaded_sigma, *_fake_statistics(fake)) == pytest.approx(
        float(accumulated.compute()), rel=1e-9
    )
    given.reset()  # keeps the reference
    given.update(fake, real=False)
    assert float(given.compute()) == pytest.approx(float(accumulated.compute()), rel=1e-9)
    with pytest.raises(RuntimeError, match="set_real_statistics"):
        given.update(real, real=True)
    with pytest.raises(ValueError, match="this metric 24"):
        given.set_real_statistics(loaded_mu[:5], loaded_sigma[:5, :5])
    np.savez(tmp_path / "batch.npz", arr_0=np.zeros((1, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="not an FID stats file"):
        load_reference_statistics(tmp_path / "batch.npz")


def _fake_statistics(fake: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        features = tiny_feature()(fake).double().numpy()
    return features.mean(0), np.cov(features, rowvar=False)


def test_plug_in_features_conv_and_dinov2_cls():
    real = images(6, 32, seed=4)
    for feature, dim in ((tiny_feature(), 24), (TinyDinoCLS(), 32)):
        metric = FIDMetric(feature=feature, reset_real_features=False)
        assert metric.num_features == dim
        metric.update(real, real=True)
        metric.update(real, real=False)
        assert abs(float(metric.compute())) < 1e-6
        metric.reset()
        metric.update(noisy(real, 0.3), real=False)
        assert float(metric.compute()) > 1e-4


# ----- PSNR / SSIM --------------------------------------------------------------------------------------------------
def test_reconstruction_metrics_equal_torchmetrics_functional():
    target = images(5, 32, seed=5)
    preds = target + 0.1 * torch.randn(target.shape, generator=torch.Generator().manual_seed(0))  # leaves [0, 1]
    metrics = ReconstructionMetrics()
    metrics.update(preds[:2], target[:2])
    metrics.update(preds[2:], target[2:])
    scores = metrics.compute()
    clamped = preds.clamp(0, 1)
    assert float(scores["psnr"]) == pytest.approx(float(peak_signal_noise_ratio(clamped, target, data_range=1.0)))
    ssim = structural_similarity_index_measure(clamped, target, data_range=1.0)
    assert float(scores["ssim"]) == pytest.approx(float(ssim), rel=1e-5)

    metrics.reset()
    metrics.update(target, target)
    identical = metrics.compute()
    assert float(identical["psnr"]) == float("inf") or float(identical["psnr"]) > 100
    assert float(identical["ssim"]) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="same shape"):
        metrics.update(target[:, :, :16], target)


# ----- evaluator ----------------------------------------------------------------------------------------------------
def test_rfid_evaluator_saves_pngs_npz_and_matches_the_metrics(tmp_path):
    dataset = SyntheticImages(count=5, size=32, seed=6)
    loader = DataLoader(dataset, batch_size=2)

    def reconstruct(batch: torch.Tensor) -> torch.Tensor:  # a 48 px "reconstruction": originals get resized
        return F.interpolate(batch, size=(48, 48), mode="bilinear", align_corners=False) * 0.9 + 0.05

    evaluator = RFIDEvaluator(feature=tiny_feature())
    result = evaluator.evaluate(reconstruct, loader, save_dir=tmp_path / "recon")

    originals = F.interpolate(dataset.images, size=(48, 48), mode="bicubic", align_corners=False, antialias=True)
    originals, reconstructions = originals.clamp(0, 1), reconstruct(dataset.images).clamp(0, 1)
    fid = FIDMetric(feature=tiny_feature())
    fid.update(originals, real=True)
    fid.update(reconstructions, real=False)
    psnr = peak_signal_noise_ratio(reconstructions, originals, data_range=1.0)
    assert result["num_samples"] == 5
    assert result["rfid"] == pytest.approx(float(fid.compute()), rel=1e-5)
    assert result["psnr"] == pytest.approx(float(psnr), rel=1e-6)
    assert 0 < result["ssim"] <= 1

    with np.load(tmp_path / "recon" / "reconstructions_rank0.npz", allow_pickle=False) as batch:
        samples = batch["arr_0"]
    assert samples.shape == (5, 48, 48, 3) and samples.dtype == np.uint8
    pngs = sorted((tmp_path / "recon").glob("*.png"))
    assert [p.name for p in pngs] == [f"rank0_{i:06d}.png" for i in range(5)]
    np.testing.assert_array_equal(np.asarray(Image.open(pngs[3])), samples[3])
    expected = (reconstructions * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(samples, expected)

    mu, sigma = fid.real_statistics()
    capped = evaluator.evaluate(reconstruct, loader, reference=(mu, sigma), max_samples=3)
    assert capped["num_samples"] == 3 and np.isfinite(capped["rfid"])
    full_with_reference = evaluator.evaluate(reconstruct, loader, reference=(mu, sigma))
    assert full_with_reference["rfid"] == pytest.approx(result["rfid"], rel=1e-6)


def test_rfid_evaluator_bf16_autocast_runs():
    model_like = nn.Conv2d(3, 3, 1)
    loader = DataLoader(SyntheticImages(count=4, size=32), batch_size=2)
    evaluator = RFIDEvaluator(feature=tiny_feature(), autocast_dtype=torch.bfloat16)
    result = evaluator.evaluate(model_like, loader)
    assert result["num_samples"] == 4 and all(np.isfinite(result[k]) for k in ("rfid", "psnr", "ssim"))


# ----- sharding and DDP ---------------------------------------------------------------------------------------------
class Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        return iter(range(3))


def test_shard_for_process_splits_without_padding():
    torch_data = SyntheticImages(count=11, size=8)
    shards = [shard_for_process(torch_data, rank, 2) for rank in (0, 1)]
    assert [len(s) for s in shards] == [6, 5]
    assert list(shards[0].indices) + list(shards[1].indices) == list(range(11))

    hf = datasets.Dataset.from_dict({"index": list(range(11))})
    hf_shards = [shard_for_process(hf, rank, 2) for rank in (0, 1)]
    assert list(hf_shards[0]["index"]) + list(hf_shards[1]["index"]) == list(range(11))

    streaming = hf.to_iterable_dataset(num_shards=1)
    seen = [row["index"] for rank in (0, 1) for row in shard_for_process(streaming, rank, 2)]
    assert sorted(seen) == list(range(11))

    with pytest.raises(TypeError, match="Cannot shard"):
        shard_for_process(Stream(), 0, 2)
    with pytest.raises(ValueError, match="process_index"):
        shard_for_process(torch_data, 2, 2)


@pytest.mark.slow
def test_two_processes_with_uneven_shards_match_one_process(tmp_path):
    launched = launch_two_cpu_processes("fid_ddp_worker.py", str(tmp_path), timeout=300)
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]
    single = evaluate_shard(None, tmp_path / "single")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]

    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [r["local_images"] for r in ranks] == [6, 5]
    for result in ranks:
        assert result["num_samples"] == single["num_samples"] == NUM_IMAGES
        for key in ("rfid", "psnr", "ssim", "rfid_reference"):
            assert result[key] == pytest.approx(single[key], rel=1e-4), key
    assert single["rfid_reference"] == pytest.approx(single["rfid"], rel=1e-6)

    per_rank = []
    for rank, count in ((0, 6), (1, 5)):
        with np.load(tmp_path / "recon" / f"reconstructions_rank{rank}.npz") as batch:
            assert batch["arr_0"].shape == (count, 32, 32, 3)
            per_rank.append(batch["arr_0"].astype(int))
    with np.load(tmp_path / "single" / "reconstructions_rank0.npz") as batch:
        np.testing.assert_allclose(np.concatenate(per_rank), batch["arr_0"].astype(int), atol=1)


def test_random_inception_weights_create_their_folder(tmp_path):
    """The JiT quickstart writes them into a folder no earlier run made (fresh clone)."""
    path = save_random_inception_weights(tmp_path / "not" / "yet" / "inception.pth")
    assert os.path.getsize(path) > 0
