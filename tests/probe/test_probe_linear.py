"""Converged linear probes and fine-tuning defaults (issue 14): the L-BFGS solver against scikit-learn, the default
head against a known optimum, the diagnostics, the protocol presets, layer-wise learning rates, and end-to-end runs on
small generated image sets. Tiny models and features, CPU, no network."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from transformers import Dinov2Config, Dinov2Model

from rae_hf.cli import parse_args
from rae_hf.data import DataArguments
from rae_hf.probe import ComponentSpec, ProbeClassifier, extract_features, feature_variants, load_encoder
from rae_hf.probe.arguments import ProbeArguments
from rae_hf.probe.data import labeled_split, probe_eval_transform
from rae_hf.probe.diagnostics import (
    edge_of_grid,
    loss_drop_last_tenth,
    not_converged,
    small_validation,
    wilson_interval,
)
from rae_hf.probe.features import FeatureSet, FeatureVariant
from rae_hf.probe.finetune import finetune_param_groups, layer_id, unfreeze
from rae_hf.probe.linear import linear_probe
from rae_hf.probe.logistic import Standardizer, fit_logistic_regression, holdout_split, sweep_l2
from rae_hf.trainers.probe_config import ProbeTrainingArguments

CLS = [FeatureVariant.from_name("cls")]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def args(**overrides) -> ProbeTrainingArguments:
    values = dict(output_dir="unused", use_cpu=True, report_to="none", disable_tqdm=True, seed=0)
    return ProbeTrainingArguments(**(values | overrides))


def synthetic(count: int, seed: int, dim: int = 16, classes: int = 4, beta: float = 3.0) -> tuple[FeatureSet, float]:
    """Features whose labels are drawn from a known multinomial logistic model (the same weights for every split):
    the Bayes-optimal classifier is linear, and its accuracy on the split is returned with it."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(classes, dim, generator=torch.Generator().manual_seed(123))
    features = 2 * torch.randn(count, dim, generator=generator) + 1  # offset and scale: standardization must cope
    logits = beta * (features - 1) @ weight.T / dim**0.5
    labels = torch.multinomial(logits.softmax(1), 1, generator=generator).flatten()
    optimum = (logits.argmax(1) == labels).float().mean().item()
    return FeatureSet({"cls": features[:, None, :].half()}, labels), optimum


# ----- L-BFGS multinomial logistic regression ------------------------------------------------------------------
@pytest.mark.parametrize("C", [0.01, 1.0, 100.0])
def test_lbfgs_equals_sklearn_multinomial_logistic_regression(C):
    """Same objective (l2 = 1 / (C N), bias unpenalized): same weights, intercepts (up to a shift) and probabilities."""
    generator = torch.Generator().manual_seed(0)
    features = 3 * torch.randn(300, 12, generator=generator) + 1
    labels = torch.randint(0, 4, (300,), generator=generator)
    features[:, :4] += 2 * torch.nn.functional.one_hot(labels, 4)
    standardizer = Standardizer.fit(features)
    fit = fit_logistic_regression(features, labels, 4, 1 / (C * 300), standardizer, tolerance=1e-7)
    reference = LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(standardizer(features).double().numpy(), labels)
    assert fit.converged and fit.grad_norm < 1e-4
    np.testing.assert_allclose(fit.weight.numpy(), reference.coef_, atol=2e-3)
    np.testing.assert_allclose((fit.bias - fit.bias.mean()).numpy(), reference.intercept_ - reference.intercept_.mean(),
                               atol=2e-3)  # fmt: skip
    probabilities = fit.logits(features, standardizer).softmax(1).numpy()
    np.testing.assert_allclose(probabilities, reference.predict_proba(standardizer(features).double().numpy()),
                               atol=1e-3)  # fmt: skip


def test_lbfgs_chunking_and_warm_start_do_not_change_the_solution():
    generator = torch.Generator().manual_seed(1)
    features, labels = torch.randn(200, 8, generator=generator), torch.randint(0, 3, (200,), generator=generator)
    standardizer = Standardizer.fit(features, chunk_size=7)
    np.testing.assert_allclose(standardizer.mean.numpy(), features.mean(0).numpy(), atol=1e-5)
    whole = fit_logistic_regression(features, labels, 3, 1e-2, standardizer, tolerance=1e-7)
    chunked = fit_logistic_regression(features, labels, 3, 1e-2, standardizer, tolerance=1e-7, chunk_size=13)
    swept = sweep_l2(features, labels, 3, [1.0, 1e-2, 1e-4], standardizer, tolerance=1e-7)
    assert [fit.l2 for fit in swept] == [1.0, 1e-2, 1e-4]  # grid order, solved strongest first with warm starts
    for other in (chunked, swept[1]):
        torch.testing.assert_close(other.weight, whole.weight, atol=1e-3, rtol=0)
    raw_weight, raw_bias = standardizer.fold(whole.weight, whole.bias)  # what the saved classifier holds
    torch.testing.assert_close(features @ raw_weight.T + raw_bias, whole.logits(features, standardizer), atol=1e-4,
                               rtol=1e-4)  # fmt: skip


def test_holdout_split_is_stratified_and_seeded():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 1)
    fit, held = holdout_split(labels, 0.1, seed=3)
    assert sorted(torch.cat([fit, held]).tolist()) == list(range(81))
    assert torch.bincount(labels[held], minlength=3).tolist() == [5, 3, 0]  # a lone example stays in the fit part
    assert torch.equal(held, holdout_split(labels, 0.1, seed=3)[1])
    assert not torch.equal(held, holdout_split(labels, 0.1, seed=4)[1])


# ----- the default head reaches the optimum; short SGD does not and says so --------------------------------------
def test_default_head_reaches_the_known_optimum_and_old_short_sgd_warns():
    train, _ = synthetic(2000, seed=0)
    validation, optimum = synthetic(2000, seed=1)
    result = linear_probe(train, validation, CLS, {"cls": 16}, 4, args())
    assert result.training["solver"] == "lbfgs" and result.training["selection"] == "holdout"
    assert result.best["top1"] >= optimum - 0.02, (result.best["top1"], optimum)
    assert result.best["converged"] and {w.code for w in result.warnings} == {"small_validation"}
    # DINOv2's 10 epochs at batch 256 are 70 steps here: the head stops short, and the report says it
    short = linear_probe(train, validation, CLS, {"cls": 16}, 4, args(protocol="dinov2"))
    assert short.training["steps"] == 70 and short.best["top1"] < result.best["top1"]
    assert {"not_converged", "edge_of_grid"} <= {w.code for w in short.warnings}


def test_converged_sgd_head_raises_no_convergence_warning():
    """Full-batch SGD run to convergence on the same kind of features: no not_converged, no edge (lr inside)."""
    train, _ = synthetic(600, seed=0)
    validation, optimum = synthetic(600, seed=1)
    run = args(protocol="dinov2", learning_rates=[0.3, 3.0, 30.0], per_device_train_batch_size=600, max_steps=300)
    result = linear_probe(train, validation, CLS, {"cls": 16}, 4, run)
    assert result.best["gradient_ratio"] < 0.1 and result.best["loss_drop_last_tenth"] < 0.01
    assert "not_converged" not in {w.code for w in result.warnings}
    assert result.best["top1"] >= optimum - 0.04


def test_lbfgs_edge_of_grid_fires_only_at_the_edge():
    train, _ = synthetic(400, seed=0)
    validation, _ = synthetic(400, seed=1)
    strong = linear_probe(train, validation, CLS, {"cls": 16}, 4, args(l2_grid=[0.1, 0.3, 1.0]))
    assert strong.best["l2"] == 0.1 and "edge_of_grid" in {w.code for w in strong.warnings}
    inside = linear_probe(train, validation, CLS, {"cls": 16}, 4, args())
    assert min(inside.training["l2_grid"]) < inside.best["l2"] < max(inside.training["l2_grid"])
    assert "edge_of_grid" not in {w.code for w in inside.warnings}


def test_diagnostics_thresholds():
    assert edge_of_grid("lr", [0.1, 1.0, 10.0], 1.0, "x") is None
    assert edge_of_grid("lr", [0.1, 1.0, 10.0], 10.0, "x").code == "edge_of_grid"
    assert "smallest" in edge_of_grid("lr", [0.1, 1.0, 10.0], 0.1, "x").message
    assert edge_of_grid("lr", [0.1], 0.1, "x") is None  # no grid, no edge
    falling = torch.linspace(2.0, 1.0, 100)[:, None]
    flat = torch.cat([torch.linspace(2.0, 1.0, 50), torch.ones(50)])[:, None]
    assert loss_drop_last_tenth(falling).item() == pytest.approx((1.15 - 1.05) / 1.15, rel=0.05)
    assert loss_drop_last_tenth(flat).item() == 0.0
    assert not_converged("head", loss_drop=0.05).code == "not_converged"
    assert not_converged("head", gradient_ratio=0.5) is not None
    assert not_converged("head", loss_drop=0.001, gradient_ratio=0.01) is None
    low, high = wilson_interval(0.5, 100)
    assert (low, high) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    assert small_validation(0.9, 300).code == "small_validation" and small_validation(0.9, 100_000) is None


# ----- presets: the protocol fills what is not given, explicit arguments win -------------------------------------
def test_protocol_presets_and_explicit_arguments():
    def parsed(*argv):
        base = ["--model_name_or_path", "x", "--dataset_name", "d", "--output_dir", "unused"]
        probe_args, _, training = parse_args((ProbeArguments, DataArguments, ProbeTrainingArguments), [*base, *argv])
        return training.resolve_defaults(probe_args.mode)

    default = parsed()
    assert (default.head_solver, default.selection, default.min_head_steps) == ("lbfgs", "holdout", 2000)
    dinov2 = parsed("--protocol", "dinov2")
    assert (dinov2.head_solver, dinov2.selection, len(dinov2.learning_rates), dinov2.num_train_epochs) == (
        "sgd", "validation", 13, 10.0)  # fmt: skip
    mae = parsed("--protocol", "mae", "--per_device_train_batch_size", "32")
    assert (mae.head_optimizer, mae.head_norm, mae.head_init, mae.learning_rates) == (
        "lars", "batchnorm", "trunc_normal", [0.1])  # fmt: skip
    assert (mae.per_device_train_batch_size, mae.num_train_epochs, mae.head_warmup_epochs) == (32, 90.0, 10.0)
    full = parsed("--mode", "full")
    assert (full.learning_rate, full.layer_decay, full.head_lr_multiplier, full.min_finetune_steps) == (
        2e-4, 0.75, 10.0, 1000)  # fmt: skip
    assert (full.per_device_train_batch_size, full.warmup_steps, full.lr_scheduler_type.value) == (64, 0.1, "cosine")
    lora = parsed("--mode", "lora", "--learning_rate", "3e-4", "--per_device_train_batch_size", "16")
    assert (lora.learning_rate, lora.per_device_train_batch_size, lora.layer_decay) == (3e-4, 16, 1.0)
    with pytest.raises(ValueError, match="layer_decay"):
        parsed("--mode", "full", "--layer_decay", "1.5")


def test_layerwise_learning_rates_and_head_multiplier(tmp_path):
    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32,
                          image_size=16, patch_size=8)  # fmt: skip
    Dinov2Model(config).save_pretrained(tmp_path)
    model = unfreeze(ProbeClassifier.from_encoder(load_encoder(str(tmp_path)), "cls", {0: "a", 1: "b"}))
    groups = finetune_param_groups(model, 1e-3, 0.05, head_lr_multiplier=10.0, layer_decay=0.5)
    lr_of = {id(p): (group["lr"], group["weight_decay"]) for group in groups for p in group["params"]}
    named = dict(model.named_parameters())
    assert len(lr_of) == len(named)  # every trainable parameter, once
    head = named["classifier.weight"]
    assert lr_of[id(head)] == (pytest.approx(1e-2), 0.05) and lr_of[id(named["classifier.bias"])][1] == 0.0
    for name, param in named.items():
        if ".layer." in name:
            block = int(name.split(".layer.")[1].split(".")[0])
            assert layer_id(name, 3) == block + 1
            assert lr_of[id(param)][0] == pytest.approx(1e-3 * 0.5 ** (3 - block)), name
        elif "embeddings" in name:
            assert lr_of[id(param)][0] == pytest.approx(1e-3 * 0.5**4), name
        if "embeddings.cls_token" in name or param.ndim == 1:
            assert lr_of[id(param)][1] == 0.0, name  # no weight decay on tokens, biases, norms


# ----- end to end on generated images ----------------------------------------------------------------------------
def _tinted_split(count: int, seed: int, size: int = 32) -> datasets.Dataset:
    """Noisy images of 4 classes differing by a faint tint: separable only in part (a probe lands in between)."""
    rng = np.random.default_rng(seed)
    tints = np.array([(30, 0, 0), (0, 30, 0), (0, 0, 30), (20, 20, 0)])
    images, labels = [], []
    for index in range(count):
        label = index % 4
        base = rng.integers(80, 170, size=3)
        pixels = np.clip(base + tints[label] + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
        images.append(Image.fromarray(pixels))
        labels.append(label)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list("abcd"))})
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


@pytest.fixture(scope="module")
def tiny_encoder_dir(tmp_path_factory) -> str:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("encoder")
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          image_size=32, patch_size=8)  # fmt: skip
    Dinov2Model(config).save_pretrained(path)
    return str(path)


@pytest.mark.slow
def test_default_probe_within_two_points_of_a_converged_reference(tiny_encoder_dir):
    """Generated images, tiny random encoder: the default probe is within 2 points of scikit-learn's converged
    reference on the same (standardized) features: `LogisticRegressionCV` (5-fold on train, the same l2 grid, the
    feature variant with the best cross-validation score), and within 3 of the best C picked on validation itself."""
    encoder = load_encoder(tiny_encoder_dir)
    variants = feature_variants(["cls", "mean"])
    spec = ComponentSpec.for_variants(variants)

    def features(split):
        dataset = labeled_split(split, "image", "label", probe_eval_transform(32, crop_pct=1.0))
        return extract_features(encoder, dataset, spec, batch_size=100, device=torch.device("cpu"), desc=None)

    train, validation = features(_tinted_split(400, seed=0)), features(_tinted_split(400, seed=1))
    dims = {variant.name: variant.dim(encoder) for variant in variants}
    run = args()
    result = linear_probe(train, validation, variants, dims, 4, run)
    cs = [1 / (l2 * len(train)) for l2 in run.l2_grid]
    best_cv, reference, oracle = -1.0, 0.0, 0.0
    for variant in variants:
        standardizer = Standardizer.fit(train.variant(variant))
        x_train, x_val = standardizer(train.variant(variant)).numpy(), standardizer(validation.variant(variant)).numpy()
        model = LogisticRegressionCV(Cs=cs, cv=5, max_iter=5000).fit(x_train, train.labels.numpy())
        cv_score = model.scores_[0].mean(0).max()
        if cv_score > best_cv:
            best_cv, reference = cv_score, model.score(x_val, validation.labels.numpy())
        for C in cs:
            fitted = LogisticRegression(C=C, max_iter=5000).fit(x_train, train.labels.numpy())
            oracle = max(oracle, fitted.score(x_val, validation.labels.numpy()))
    assert 0.3 < reference < 1.0  # a task with room between chance and perfect
    assert result.best["top1"] >= reference - 0.02, (result.best, reference, oracle)
    assert result.best["top1"] >= oracle - 0.03, (result.best, reference, oracle)


def _dead_value_encoder(path) -> str:
    """A tiny encoder whose value projections are zero: attention passes nothing, so the CLS token never sees the
    image and frozen CLS features are the same for every input (no linear head can do better than chance). LoRA
    (on query/value) and full fine-tuning can open the path."""
    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          image_size=32, patch_size=8)  # fmt: skip
    model = Dinov2Model(config)
    with torch.no_grad():
        for layer in model.encoder.layer:
            layer.attention.v_proj.weight.zero_()
            layer.attention.v_proj.bias.zero_()
    model.save_pretrained(path)
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["lora", "full"])
def test_default_finetuning_beats_chance_and_the_frozen_probe(mode, tmp_path):
    from rae_hf.scripts import run_probe

    encoder_dir = _dead_value_encoder(tmp_path / "encoder")
    splits = datasets.DatasetDict({"train": _colour_split(64, 0), "validation": _colour_split(32, 1)})
    splits.save_to_disk(tmp_path / "data")
    common = [
        "--model_name_or_path",
        encoder_dir,
        "--dataset_name",
        str(tmp_path / "data"),
        "--use_cpu",
        "true",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        "--pooling",
        "cls",
        "--per_device_eval_batch_size",
        "32",
    ]
    frozen = run_probe.main([*common, "--output_dir", str(tmp_path / "linear"), "--run_knn", "false"])
    assert frozen["best"]["top1"] == pytest.approx(0.25)  # constant features: chance
    tuned = run_probe.main(
        [
            *common,
            "--output_dir",
            str(tmp_path / mode),
            "--mode",
            mode,
            "--max_steps",
            "60",
            "--per_device_train_batch_size",
            "16",
            "--save_strategy",
            "no",
            "--eval_strategy",
            "no",
        ]
    )
    assert tuned["finetune"]["steps"] == 60
    assert tuned["finetune"]["top1"] >= 0.6, tuned["finetune"]  # chance and the frozen probe: 0.25


def _colour_split(count: int, seed: int, size: int = 32) -> datasets.Dataset:
    colours = ((220, 40, 40), (40, 200, 60), (40, 60, 220), (230, 210, 40))
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(np.clip(np.array(colours[i % 4]) + rng.integers(-40, 41, (size, size, 3)), 0, 255)
                              .astype(np.uint8)) for i in range(count)]  # fmt: skip
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list("rgby"))})
    return datasets.Dataset.from_dict({"image": images, "label": [i % 4 for i in range(count)]}, features=features)
