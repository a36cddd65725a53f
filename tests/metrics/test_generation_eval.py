"""Inception Score (equal to torch-fidelity's), the generation evaluation loop, the ADM sample writer and reference
statistics files, offline (a tiny stand-in for the Inception network; random Inception weights where it matters)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import launch_two_cpu_processes
from fid_ddp_worker import TinyInception, evaluate_generation_shard
from PIL import Image
from torch_fidelity.metric_isc import isc_features_to_metric

from rae_hf.data import process_range
from rae_hf.evaluation import (
    SampleWriter,
    balanced_labels,
    evaluate_generation,
    load_reference_statistics,
    save_reference_statistics,
)
from rae_hf.metrics import (
    FIDMetric,
    InceptionFeatureExtractor,
    InceptionScore,
    inception_score,
    save_random_inception_weights,
)


class Sampler:
    """A seeded "generator": images whose colour depends on the label; records what it was asked for."""

    def __init__(self, size: int = 16):
        self.size = size
        self.calls: list[tuple[int, list[int] | None]] = []

    def __call__(self, count: int, labels: torch.Tensor | None) -> torch.Tensor:
        self.calls.append((count, None if labels is None else labels.tolist()))
        generator = torch.Generator().manual_seed(len(self.calls))
        images = torch.rand(count, 3, self.size, self.size, generator=generator)
        if labels is not None:
            images[:, 0] = labels.view(-1, 1, 1).float() / 4
        return images


# ----- Inception Score ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("count", "splits", "shuffle"), [(50, 10, True), (37, 10, True), (23, 4, False), (12, 1, True)]
)
def test_inception_score_equals_torch_fidelity_formula(count: int, splits: int, shuffle: bool):
    logits = torch.randn(count, 1008, generator=torch.Generator().manual_seed(count)) * 3
    mean, std = inception_score(logits, splits=splits, shuffle=shuffle)
    reference = isc_features_to_metric(logits, splits=splits, shuffle=shuffle, rng_seed=2020)
    assert mean == pytest.approx(reference["inception_score_mean"], rel=1e-12)
    assert std == pytest.approx(reference["inception_score_std"], rel=1e-9, abs=1e-12)


def test_inception_score_metric_streams_batches_and_checks_its_input():
    logits = torch.randn(30, 1008, generator=torch.Generator().manual_seed(1)) * 2
    metric = InceptionScore(feature=TinyInception())
    for chunk in logits.split(7):
        metric.update_logits(chunk)
    mean, std = metric.compute()
    reference = isc_features_to_metric(logits)
    assert float(mean) == pytest.approx(reference["inception_score_mean"], rel=1e-6)
    assert float(std) == pytest.approx(reference["inception_score_std"], rel=1e-5)
    uniform = torch.zeros(20, 8)  # p(y|x) = p(y): IS = 1, the minimum
    assert inception_score(uniform)[0] == pytest.approx(1.0)
    peaked = torch.eye(10).repeat(2, 1) * 50  # each image certain of its class, the classes uniform: IS = 10
    assert inception_score(peaked, splits=1)[0] == pytest.approx(10.0, rel=1e-6)
    with pytest.raises(ValueError, match="at least 10 images"):
        inception_score(torch.randn(5, 8))
    with pytest.raises(ValueError, match="no images"):
        InceptionScore(feature=TinyInception()).compute()


def test_inception_pool_and_logits_are_torch_fidelity_features(tmp_path):
    """One pass gives the 2048-d FID features and torch-fidelity's `logits_unbiased` (pool @ fc.weight.T)."""
    extractor = InceptionFeatureExtractor(save_random_inception_weights(tmp_path / "w.pth"))
    images = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pool, logits = extractor.pool_and_logits(images)
        assert torch.equal(extractor(images), pool)
    assert pool.shape == (2, 2048) and logits.shape == (2, 1008)
    torch.testing.assert_close(logits, pool @ extractor.network.fc.weight.T, rtol=1e-4, atol=1e-4)


# ----- generation loop ----------------------------------------------------------------------------------------------
def test_balanced_labels_and_process_ranges():
    assert balanced_labels(12, 4).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    counts = torch.bincount(balanced_labels(50_000, 1000))
    assert counts.min() == counts.max() == 50
    counts = torch.bincount(balanced_labels(10, 4))
    assert counts.max() - counts.min() <= 1 and counts.sum() == 10
    with pytest.raises(ValueError, match="num_classes"):
        balanced_labels(3, 4)
    ranges = [process_range(11, rank, 3) for rank in range(3)]
    assert [list(r) for r in ranges] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]


def test_evaluate_generation_equals_metrics_on_the_same_samples(tmp_path):
    """FID and IS of the loop equal the metrics fed the same images by hand; samples, labels and files line up."""
    feature = TinyInception()
    real = torch.rand(40, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    reference = FIDMetric(feature=feature)
    reference.update(real, real=True)
    mu, sigma = reference.real_statistics()
    save_reference_statistics(tmp_path / "ref.npz", mu, sigma)

    sampler = Sampler()
    results = evaluate_generation(
        sampler, 22, 8, reference=tmp_path / "ref.npz", num_classes=4, feature=feature, save_dir=tmp_path / "s"
    )
    assert [count for count, _ in sampler.calls] == [8, 8, 6]
    labels = [label for _, batch in sampler.calls for label in batch]
    assert labels == balanced_labels(22, 4).tolist()

    replay = Sampler()
    samples = torch.cat([replay(count, torch.tensor(batch)) for count, batch in sampler.calls])
    fid = FIDMetric(feature=feature)
    fid.set_real_statistics(mu, sigma)
    fid.update(samples, real=False)
    score = InceptionScore(feature=feature)
    score.update(samples)
    mean, std = score.compute()
    assert results["num_samples"] == 22
    assert results["fid"] == pytest.approx(float(fid.compute()), rel=1e-9)
    assert results["inception_score"] == pytest.approx(float(mean), rel=1e-9)
    assert results["inception_score_std"] == pytest.approx(float(std), rel=1e-9)

    with np.load(tmp_path / "s" / "samples_rank0.npz", allow_pickle=False) as batch:
        assert batch["arr_0"].shape == (22, 16, 16, 3) and batch["arr_0"].dtype == np.uint8
        assert batch["arr_1"].tolist() == labels
        np.testing.assert_array_equal(
            batch["arr_0"], samples.mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        )
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "s" / "rank0_000021.png")), batch["arr_0"][21])


def test_evaluate_generation_unconditional_without_reference_and_errors():
    sampler = Sampler()
    results = evaluate_generation(sampler, 10, 4, feature=TinyInception())
    assert "fid" not in results and results["inception_score"] >= 1.0 and results["num_samples"] == 10
    assert [labels for _, labels in sampler.calls] == [None, None, None]
    with pytest.raises(ValueError, match="too few"):
        evaluate_generation(sampler, 5, 4, feature=TinyInception())
    with pytest.raises(ValueError, match="expected"):
        evaluate_generation(lambda n, y: torch.rand(n, 1, 8, 8), 10, 4, feature=TinyInception())
    with pytest.raises(ValueError, match="labels has 3 entries"):
        evaluate_generation(sampler, 10, 4, labels=[0, 1, 2], feature=TinyInception())


@pytest.mark.slow
def test_evaluate_generation_two_processes_match_one(tmp_path):
    """2 gloo processes generate 6 + 5 of 11 samples and get the single-process FID/IS (each sample scored once)."""
    launched = launch_two_cpu_processes("fid_ddp_worker.py", str(tmp_path), "generation", timeout=300)
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]
    single = evaluate_generation_shard(None, tmp_path / "single")
    per_rank = []
    for rank, count in ((0, 6), (1, 5)):
        result = json.loads((tmp_path / f"generation_rank{rank}.json").read_text())
        assert result["num_samples"] == 11
        assert result["fid"] == pytest.approx(single["fid"], rel=1e-6)
        assert result["inception_score"] == pytest.approx(single["inception_score"], rel=1e-6)
        with np.load(tmp_path / "samples" / f"samples_rank{rank}.npz") as batch:
            assert batch["arr_0"].shape[0] == count
            per_rank.append(batch["arr_1"])
    with np.load(tmp_path / "single" / "samples_rank0.npz") as batch:
        np.testing.assert_array_equal(np.concatenate(per_rank), batch["arr_1"])


# ----- writer and reference files -----------------------------------------------------------------------------------
def test_sample_writer_without_labels_and_without_pngs(tmp_path):
    with SampleWriter(tmp_path, process_index=3, png=False) as writer:
        writer.write(torch.ones(2, 3, 4, 5))
        writer.write(torch.zeros(1, 3, 4, 5), labels=torch.tensor([1]))  # labels for some batches only: dropped
        with pytest.raises(ValueError, match="size changed"):
            writer.write(torch.zeros(1, 3, 5, 5))
        path = writer.finish()
    assert path == tmp_path / "samples_rank3.npz" and not list(tmp_path.glob("*.png"))
    with np.load(path) as batch:
        assert batch.files == ["arr_0"] and batch["arr_0"].shape == (3, 4, 5, 3)
        assert batch["arr_0"][:2].min() == 255 and batch["arr_0"][2].max() == 0
    with SampleWriter(tmp_path / "empty") as writer:
        assert writer.finish() is None


def test_reference_statistics_npz_layouts(tmp_path):
    mu, sigma = np.arange(3.0), np.eye(3) * 2
    np.savez(tmp_path / "adm.npz", mu=mu, sigma=sigma, mu_s=mu[:2], sigma_s=np.eye(2), arr_0=np.zeros((1, 2, 2, 3)))
    loaded = load_reference_statistics(tmp_path / "adm.npz")
    np.testing.assert_array_equal(loaded[0], mu)
    np.testing.assert_array_equal(loaded[1], sigma)
    assert load_reference_statistics((mu, sigma))[1].dtype == np.float64
    with pytest.raises(FileNotFoundError, match=r"missing\.npz"):
        load_reference_statistics(tmp_path / "missing.npz")
    np.savez(tmp_path / "images_only.npz", arr_0=np.zeros((1, 2, 2, 3)))
    with pytest.raises(ValueError, match=r"images_only\.npz has no"):
        load_reference_statistics(tmp_path / "images_only.npz")
    np.savez(tmp_path / "flat.npz", mu=np.zeros((3, 3)), sigma=sigma)
    with pytest.raises(ValueError, match=r"flat\.npz: expected mu \[D\] and sigma \[D, D\]"):
        load_reference_statistics(tmp_path / "flat.npz")
    with pytest.raises(ValueError, match="expected mu"):
        save_reference_statistics(tmp_path / "never.npz", mu, sigma[:2])
