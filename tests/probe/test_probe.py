"""Probing (`rae_hf.probe`, `run_probe.py`): encoders and token layouts, features and their cache, the linear-head
grid, kNN, LoRA, classifiers, recipes and the script end to end. Tiny encoders built from configs, no network."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_rae
from PIL import Image
from transformers import (
    AutoModelForImageClassification,
    CLIPConfig,
    CLIPModel,
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    DINOv3ViTConfig,
    DINOv3ViTModel,
    SiglipConfig,
    SiglipModel,
    ViTConfig,
    ViTMAEConfig,
    ViTMAEModel,
    ViTModel,
)

from rae_hf.cli import parse_args
from rae_hf.data import DataArguments, ImageCollator
from rae_hf.probe import (
    CachedFeatureSource,
    ComponentSpec,
    DatasetCheck,
    EncoderFeatureSource,
    FeatureCache,
    FeatureVariant,
    LinearHeadGrid,
    ProbeClassifier,
    check_variants,
    compute_components,
    evaluate_heads,
    extract_features,
    feature_cache_key,
    feature_description,
    feature_variants,
    iter_components,
    knn_evaluate,
    knn_scores,
    load_encoder,
    train_heads,
)
from rae_hf.probe.arguments import ProbeArguments
from rae_hf.probe.data import detect_label_column, labeled_split, probe_eval_transform
from rae_hf.probe.finetune import apply_lora, lora_target_modules
from rae_hf.scripts import run_probe
from rae_hf.tools.make_dummy_dataset import write_dummy_dataset
from rae_hf.trainers.probe_config import ProbeTrainingArguments

ROOT = Path(__file__).resolve().parents[2]

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
             patch_size=8)  # fmt: skip
TEXT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=64,
            max_position_embeddings=8, bos_token_id=1, eos_token_id=2, pad_token_id=0)  # fmt: skip
COLOURS = ((220, 40, 40), (40, 200, 60), (40, 60, 220), (230, 210, 40))
CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors on 2 shared cores: one intra-op thread is ~10x faster than two fighting for a busy core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def colour_split(count: int, seed: int, size: int = 32) -> datasets.Dataset:
    """`count` noisy images whose colour is their class (4 classes, balanced): linearly separable."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for index in range(count):
        label = index % len(COLOURS)
        noise = rng.integers(-40, 41, size=(size, size, 3))
        pixels = np.clip(np.array(COLOURS[label]) + noise, 0, 255).astype(np.uint8)
        images.append(Image.fromarray(pixels))
        labels.append(label)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["r", "g", "b", "y"])})
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


@pytest.fixture(scope="module")
def splits() -> dict[str, datasets.Dataset]:
    return {"train": colour_split(48, seed=0), "validation": colour_split(24, seed=1)}


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory) -> str:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("encoder") / "dinov2-reg"
    Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**SMALL, num_register_tokens=4)).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def encoder(encoder_dir):
    return load_encoder(encoder_dir)


def eval_split(split: datasets.Dataset, size: int = 32):
    return labeled_split(split, "image", "label", probe_eval_transform(size, crop_pct=1.0))


def features_of(encoder, split, variants, dtype=torch.float16):
    spec = ComponentSpec.for_variants(variants)
    return extract_features(encoder, eval_split(split), spec, batch_size=16, device=CPU, storage_dtype=dtype, desc=None)


def make_grid(encoder, variants, learning_rates, **kwargs) -> LinearHeadGrid:
    dims = {variant.name: variant.dim(encoder) for variant in variants}
    return LinearHeadGrid(dims, learning_rates, num_classes=4, seed=0, **kwargs)


# ----- encoders ------------------------------------------------------------------------------------------------
def _save_tiny(kind: str, path: Path) -> torch.nn.Module:
    torch.manual_seed(0)
    model = {
        "dinov2": lambda: Dinov2Model(Dinov2Config(**SMALL)),
        "dinov3": lambda: DINOv3ViTModel(DINOv3ViTConfig(**SMALL, num_register_tokens=2)),
        "vit": lambda: ViTModel(ViTConfig(**SMALL), add_pooling_layer=False),
        "vit_mae": lambda: ViTMAEModel(ViTMAEConfig(**SMALL)),  # mask_ratio 0.75 in the config: the loader resets it
        "clip": lambda: CLIPModel(CLIPConfig(text_config=TEXT, vision_config=SMALL, projection_dim=16)),
        "siglip": lambda: SiglipModel(SiglipConfig(text_config=TEXT, vision_config=SMALL)),
    }[kind]()
    model.save_pretrained(path)
    return model.eval()


# kind -> (model_type, prefix tokens, CLS feature from a pooling head)
LAYOUTS = {
    "dinov2": ("dinov2", 1, False),
    "dinov3": ("dinov3_vit", 3, False),
    "vit": ("vit", 1, False),
    "vit_mae": ("vit_mae", 1, False),
    "clip": ("clip_vision_model", 1, False),
    "siglip": ("siglip_vision_model", 0, True),
}


@pytest.mark.parametrize("kind", sorted(LAYOUTS))
def test_encoder_layouts(kind, tmp_path):
    """Every architecture maps [0, 1] images to normed tokens; composite checkpoints give their vision tower."""
    model = _save_tiny(kind, tmp_path)
    encoder = load_encoder(str(tmp_path))
    model_type, prefix, pooled = LAYOUTS[kind]
    assert (encoder.model_type, encoder.num_prefix_tokens, encoder.image_size) == (model_type, prefix, 32)
    images = torch.rand(2, 3, 40, 40)  # resized to 32 inside
    output = encoder(images, num_blocks=2)
    assert [tuple(block.shape) for block in output.blocks] == [(2, prefix + 16, 32)] * 2
    assert (output.pooled_output is not None) == pooled
    vision = getattr(model, "vision_model", model)
    inputs = encoder.preprocess(images)
    kwargs = {}
    if kind == "vit_mae":  # every patch, in place
        assert encoder.config.mask_ratio == 0.0
        vision.config.mask_ratio = 0.0
        kwargs["noise"] = torch.arange(16).expand(2, -1).float()
        assert torch.equal(vision(pixel_values=inputs, **kwargs).ids_restore, kwargs["noise"].long())
    hidden = vision(pixel_values=inputs, output_hidden_states=True, **kwargs).hidden_states
    norm = getattr(encoder.backbone, encoder.layout.final_norm)
    torch.testing.assert_close(output.blocks[0], norm(hidden[-2]))  # DINOv2 protocol: normed intermediate blocks
    torch.testing.assert_close(output.blocks[1], norm(hidden[-1]))
    spec = ComponentSpec.for_variants(feature_variants(["cls", "mean"]))
    components = compute_components(encoder, images, spec)
    assert components["cls"].shape == (2, 1, 32) and components["patch_mean"].shape == (2, 32)
    if kind == "siglip":
        with pytest.raises(ValueError, match="CLS token in every block"):
            check_variants(encoder, [FeatureVariant.from_name("last2")])


def test_rae_checkpoint_probe_uses_its_encoder(tmp_path):
    """`model_type == "rae"` -> its encoder, its preprocessing and its latent statistics."""
    rae = tiny_rae().eval()
    torch.manual_seed(1)
    rae.set_latent_stats(0.1 * torch.randn(32, 4, 4), 0.5 + torch.rand(32, 4, 4))
    rae.save_pretrained(tmp_path)
    encoder = load_encoder(str(tmp_path))
    assert (encoder.model_type, encoder.image_size, encoder.num_prefix_tokens) == ("dinov2_with_registers", 32, 5)
    images = torch.rand(3, 3, 40, 40)
    spec = ComponentSpec(cls_blocks=1, patch_mean=True, latent=True)
    components = compute_components(encoder, images, spec)
    with torch.no_grad():
        tokens = rae.encode_tokens(images)
        torch.testing.assert_close(components["patch_mean"], tokens.mean(dim=1))
        torch.testing.assert_close(components["latent"].flatten(1), rae.encode(images).latents.flatten(1))
        cls = rae.encoder(pixel_values=rae.preprocess(images)).last_hidden_state[:, 0]
        torch.testing.assert_close(components["cls"][:, 0], cls)
    with pytest.raises(ValueError, match="leave --image_size unset"):
        load_encoder(str(tmp_path), image_size=16)


def test_feature_variants():
    names = [v.name for v in feature_variants(["last_n"], n_last_blocks=[1, 4], last_n_avgpool="both")]
    assert names == ["cls", "cls_mean", "last4", "last4_avgpool"]  # DINOv2's 4 variants
    assert [v.name for v in feature_variants(["cls", "last_n", "mean"], [1])] == ["cls", "mean"]
    for name in ("cls", "mean", "cls_mean", "last3", "last3_avgpool", "latent", "latent_mean"):
        assert FeatureVariant.from_name(name).name == name
    spec = ComponentSpec.for_variants(feature_variants(["last_n", "latent_mean"], [1, 4], "both"))
    assert spec == ComponentSpec(cls_blocks=4, patch_mean=True, latent=False, latent_mean=True)
    with pytest.raises(ValueError, match="Unknown pooling"):
        feature_variants(["max"])


# ----- heads -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("optimizer", "head_norm", "learning_rates"),
    [("sgd", False, [0.1, 1.0, 10.0]), ("lars", True, [100.0, 1000.0]), ("adamw", False, [1e-2, 1e-1])],
)
def test_linear_probe_separates_synthetic_classes(encoder, splits, optimizer, head_norm, learning_rates):
    variants = feature_variants(["cls", "mean"])
    train = features_of(encoder, splits["train"], variants)
    validation = features_of(encoder, splits["validation"], variants)
    heads = make_grid(encoder, variants, learning_rates, batchnorm=head_norm)
    train_heads(heads, CachedFeatureSource(train, variants, CPU), num_epochs=30, batch_size=16, optimizer=optimizer,
                progress=False)  # fmt: skip
    accuracy = evaluate_heads(heads, CachedFeatureSource(validation, variants, CPU), batch_size=32)
    assert max(entry["top1"] for entry in accuracy) >= 0.95
    assert all(entry["top5"] == 1.0 for entry in accuracy)  # 4 classes: top-5 covers them all


def test_cached_and_uncached_paths_agree(encoder, splits):
    """Same seed: features cached once vs the encoder re-run on every batch give the same heads and accuracy."""
    variants = feature_variants(["cls", "cls_mean"])
    results = []
    for cached in (True, False):
        train_set, val_set = eval_split(splits["train"]), eval_split(splits["validation"])
        if cached:
            train = CachedFeatureSource(features_of(encoder, splits["train"], variants), variants, CPU)
            validation = CachedFeatureSource(features_of(encoder, splits["validation"], variants), variants, CPU)
        else:
            train = EncoderFeatureSource(encoder, train_set, variants, CPU, storage_dtype=torch.float16)
            validation = EncoderFeatureSource(encoder, val_set, variants, CPU, storage_dtype=torch.float16)
        heads = make_grid(encoder, variants, [0.5, 5.0], batchnorm=True)
        train_heads(heads, train, num_epochs=3, batch_size=16, seed=7, progress=False)
        results.append((heads.state_dict(), evaluate_heads(heads, validation, batch_size=16)))
    (cached_state, cached_accuracy), (direct_state, direct_accuracy) = results
    assert cached_accuracy == direct_accuracy
    for name, value in cached_state.items():
        torch.testing.assert_close(value, direct_state[name], rtol=1e-4, atol=1e-5, msg=name)


class CountingSource(CachedFeatureSource):
    """Counts passes over the data and batches served."""

    def __init__(self, *args):
        super().__init__(*args)
        self.passes = self.served = 0

    def batches(self, order, batch_size):
        self.passes += 1
        for batch in super().batches(order, batch_size):
            self.served += 1
            yield batch


def test_lr_grid_trains_all_heads_in_one_pass(encoder, splits):
    variants = feature_variants(["cls", "mean"])
    rates = [1e-3, 1e-2, 1e-1]
    heads = make_grid(encoder, variants, rates)
    source = CountingSource(features_of(encoder, splits["train"], variants), variants, CPU)
    result = train_heads(heads, source, num_epochs=2, batch_size=16, progress=False)
    steps_per_epoch = len(source) // 16
    assert (source.passes, source.served, result.steps) == (2, 2 * steps_per_epoch, 2 * steps_per_epoch)
    assert len(heads.specs) == 6  # 2 variants x 3 learning rates, fed by the same batches
    optimizer = result.optimizer
    assert isinstance(optimizer, torch.optim.SGD) and len(optimizer.param_groups) == len(rates)
    scale = result.lr_scale
    assert scale == 16 / 256
    group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    head_lrs = [group_of[id(head.weight)]["base_lr"] for head in heads.heads]
    assert head_lrs == [spec.learning_rate for spec in heads.specs] == rates * 2
    assert len(set(head_lrs[:3])) == 3
    # cosine to zero, each group from its own peak
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([0.0, 0.0, 0.0], abs=1e-12)
    assert [group["initial_lr"] for group in optimizer.param_groups] == pytest.approx([r * scale for r in rates])


# ----- kNN -------------------------------------------------------------------------------------------------------
def test_knn_matches_brute_force():
    generator = torch.Generator().manual_seed(0)
    train, queries = torch.randn(40, 8, generator=generator), torch.randn(15, 8, generator=generator)
    train_labels, query_labels = torch.randint(0, 3, (40,), generator=generator), torch.randint(0, 3, (15,))
    ks, temperature = (1, 5, 10, 100), 0.07
    scores = knn_scores(train, train_labels, queries, 3, ks, temperature, batch_size=4)
    assert sorted(scores) == [1, 5, 10, 40]  # 100 clipped to the 40 training examples
    for k, values in scores.items():
        for q in range(queries.shape[0]):
            similarity = [F.cosine_similarity(queries[q], train[i], dim=0).item() for i in range(40)]
            nearest = sorted(range(40), key=lambda i: -similarity[i])[:k]
            expected = [sum(math.exp(similarity[i] / temperature) for i in nearest if train_labels[i] == c)
                        for c in range(3)]  # fmt: skip
            torch.testing.assert_close(values[q], torch.tensor(expected), rtol=1e-4, atol=1e-6)
    results = knn_evaluate(train, train_labels, queries, query_labels, 3, ks, temperature)
    for entry in results:
        expected = (scores[entry["k"]].argmax(1) == query_labels).float().mean().item()
        assert entry["top1"] == pytest.approx(expected)


# ----- fine-tuning and classifiers -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["rae", "siglip"])
def test_lora_adds_trainable_parameters_only_in_adapters(kind, tmp_path):
    if kind == "rae":
        tiny_rae().save_pretrained(tmp_path)
    else:
        _save_tiny("siglip", tmp_path)
    encoder = load_encoder(str(tmp_path))
    classifier = ProbeClassifier.from_encoder(encoder, "cls", {0: "a", 1: "b"})
    base = {name: p.numel() for name, p in classifier.named_parameters()}
    model = apply_lora(classifier, r=4)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in name or ".classifier.modules_to_save." in name for name in trainable)
    targets = lora_target_modules(encoder.backbone)
    adapted = {name.split(".lora_")[0].rsplit(".", 1)[-1] for name in trainable if ".lora_" in name}
    assert adapted == set(targets) == {"q_proj", "v_proj"}
    lora_count = sum(1 for name in trainable if ".lora_A." in name)
    assert lora_count == 2 * encoder.num_blocks  # query and value of every block, nothing else
    frozen = sum(p.numel() for name, p in model.named_parameters() if not p.requires_grad and ".lora_" not in name)
    assert frozen == sum(base.values())  # base weights (and the original head copy) untouched and frozen
    loss = model(pixel_values=torch.rand(2, 3, 32, 32), labels=torch.tensor([0, 1])).loss
    loss.backward()
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def test_classifier_round_trip(encoder, tmp_path):
    classifier = ProbeClassifier.from_encoder(encoder, "last2_avgpool", {0: "r", 1: "g", 2: "b"}, head_norm="batchnorm")
    classifier.eval().save_pretrained(tmp_path)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, ProbeClassifier)
    assert loaded.config.id2label == {0: "r", 1: "g", 2: "b"} and loaded.config.label2id["g"] == 1
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images).logits, classifier(images).logits)


# ----- cache -----------------------------------------------------------------------------------------------------
def test_cache_key_changes_with_what_features_depend_on(encoder, encoder_dir, splits):
    def key(encoder=encoder, variants=("cls",), n_last=(1,), transform="eval-32", split="train", fingerprint=None):
        spec = ComponentSpec.for_variants(feature_variants(list(variants), list(n_last)))
        fingerprint = fingerprint or splits["train"]._fingerprint
        description = feature_description(encoder, spec, transform, split, fingerprint, 48, "auto", torch.float16)
        return feature_cache_key(description)

    base = key()
    assert key() == base and key(variants=("last_n",)) == base  # last_n with n=1 stores the same CLS tokens
    assert key(encoder=load_encoder(encoder_dir)) == base  # same weights loaded again
    perturbed = load_encoder(encoder_dir)
    with torch.no_grad():
        perturbed.backbone.embeddings.cls_token.add_(1e-3)
    changed = {
        "pooling mean": key(variants=("mean",)),
        "pooling last_n": key(variants=("last_n",), n_last=(2,)),
        "resolution": key(encoder=load_encoder(encoder_dir, image_size=16)),
        "weights": key(encoder=perturbed),
        "transform": key(transform="eval-16"),
        "split": key(split="validation"),
        "dataset": key(fingerprint=splits["validation"]._fingerprint),
    }
    assert base not in changed.values() and len(set(changed.values())) == len(changed)


def test_disk_cache_reuse_and_stale_detection(encoder, splits, tmp_path, caplog):
    variants = feature_variants(["cls_mean"])
    spec = ComponentSpec.for_variants(variants)
    dataset = eval_split(splits["train"])
    calls = []

    def extract():
        calls.append(1)
        loader = torch.utils.data.DataLoader(dataset, batch_size=16, collate_fn=ImageCollator())
        return iter_components(encoder, loader, spec, CPU)

    description = feature_description(encoder, spec, "t", "train", "fp", 48, "auto", torch.float16)
    check = DatasetCheck.from_labels(splits["train"]["label"])
    cache = FeatureCache(str(tmp_path))
    first, hit_first = cache.get_or_extract(description, extract, spec.shapes(encoder), check)
    second, hit_second = cache.get_or_extract(description, extract, spec.shapes(encoder), check)
    assert (hit_first, hit_second, len(calls)) == (False, True, 1)
    assert set(second.components) == {"cls", "patch_mean"} and second.components["cls"].dtype == torch.float16
    for name, value in first.components.items():
        torch.testing.assert_close(second.components[name], value.cpu())
    assert torch.equal(second.labels, torch.tensor(splits["train"]["label"]))
    assert datasets.load_from_disk(os.path.join(tmp_path, feature_cache_key(description), "dataset")).num_rows == 48

    other_labels = DatasetCheck.from_labels([(label + 1) % 4 for label in splits["train"]["label"]])
    with caplog.at_level(logging.WARNING, logger="rae_hf.probe.cache"):
        _, hit = cache.get_or_extract(description, extract, spec.shapes(encoder), other_labels)
    assert not hit and len(calls) == 2 and "labels changed" in caplog.text
    _, hit = cache.get_or_extract(description, extract, spec.shapes(encoder), DatasetCheck(47, check.labels_digest))
    assert not hit and len(calls) == 3


# ----- data ------------------------------------------------------------------------------------------------------
def test_label_column_detection():
    def dataset(**columns):
        return datasets.Dataset.from_dict({"image": ["a.png", "b.png"], **columns})

    assert detect_label_column(dataset(label=[0, 1], labels=[1, 0])) == "label"
    assert detect_label_column(dataset(fine_label=[0, 1], coarse_label=[0, 0])) == "fine_label"
    features = datasets.Features({"image": datasets.Value("string"), "species": datasets.ClassLabel(names=["x", "y"])})
    species = datasets.Dataset.from_dict({"image": ["a.png"], "species": [1]}, features=features)
    assert detect_label_column(species) == "species"
    assert detect_label_column(dataset(label=[0, 1], kind=[1, 1]), "kind") == "kind"
    with pytest.raises(ValueError, match=r"available columns: \['image', 'foo'\].*--label_column_name"):
        detect_label_column(dataset(foo=[0, 1]))
    with pytest.raises(ValueError, match="'kind' not found"):
        detect_label_column(dataset(label=[0, 1]), "kind")


# ----- recipes ---------------------------------------------------------------------------------------------------
RECIPES = sorted((ROOT / "recipes" / "probe").glob("*.yaml"))
DATACLASSES = (ProbeArguments, DataArguments, ProbeTrainingArguments)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_probe_recipes_parse(path, tmp_path):
    probe_args, data_args, args = parse_args(DATACLASSES, [str(path), "--output_dir", str(tmp_path), "--bf16", "false"])
    assert probe_args.model_name_or_path and probe_args.mode in ("linear", "knn", "lora", "full")
    args.resolve_defaults(probe_args.mode)  # the recipe's values are valid for its mode
    assert (data_args.dataset_name is None) != (data_args.train_dir is None)
    feature_variants(probe_args.pooling, probe_args.n_last_blocks, probe_args.last_n_avgpool)


def test_paper_recipes_follow_their_protocols(tmp_path):
    def load(name):
        return parse_args(DATACLASSES, [str(ROOT / "recipes" / "probe" / name), "--output_dir", str(tmp_path)])

    probe_args, data_args, args = load("dinov2_b_linear_imagenet.yaml")
    assert (args.protocol, args.head_solver, args.selection) == ("dinov2", "sgd", "validation")
    names = [v.name for v in feature_variants(probe_args.pooling, probe_args.n_last_blocks, probe_args.last_n_avgpool)]
    assert names == ["cls", "cls_mean", "last4", "last4_avgpool"] and len(args.learning_rates) == 13
    assert (args.head_optimizer, args.head_init, args.head_norm, args.num_train_epochs) == ("sgd", "normal", "none", 10)
    assert (data_args.dataset_name, data_args.image_size, probe_args.crop_pct) == ("ILSVRC/imagenet-1k", 224, 0.875)
    probe_args, _, args = load("mae_b_linear_imagenet.yaml")
    assert (args.protocol, args.head_solver, args.selection) == ("mae", "sgd", "validation")
    assert (probe_args.pooling, args.head_norm, args.head_optimizer, args.head_init) == (
        ["cls"],
        "batchnorm",
        "lars",
        "trunc_normal",
    )
    assert (args.learning_rates, args.per_device_train_batch_size, args.num_train_epochs) == ([0.1], 16384, 90)
    assert args.head_warmup_epochs == 10
    probe_args, data_args, _ = load("siglip2_b_linear_imagenet.yaml")
    assert probe_args.model_name_or_path == "google/siglip2-base-patch16-256" and data_args.image_size == 256


# ----- run_probe.py end to end -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dummy_data(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("probe-data")
    write_dummy_dataset(str(root / "hf"), {"train": 32, "validation": 12, "test": 4}, 32, "hf", seed=0)
    write_dummy_dataset(str(root / "folder"), {"train": 16, "validation": 8}, 32, "imagefolder", seed=0)
    return {"hf": str(root / "hf"), "folder": str(root / "folder")}


def _argv(encoder_dir, output_dir, *extra):
    return ["--model_name_or_path", encoder_dir, "--output_dir", str(output_dir), "--use_cpu", "true",
            "--report_to", "none", "--per_device_eval_batch_size", "16", "--disable_tqdm", "true", *extra]  # fmt: skip


@pytest.mark.slow
def test_run_probe_linear_and_knn(encoder_dir, dummy_data, tmp_path):
    cache = tmp_path / "features"
    argv = _argv(encoder_dir, tmp_path / "linear", "--dataset_name", dummy_data["hf"], "--feature_cache_dir",
                 str(cache), "--pooling", "cls", "mean", "--protocol", "dinov2", "--learning_rates", "0.1", "1.0",
                 "--num_train_epochs", "4", "--per_device_train_batch_size", "8", "--knn_k", "5", "10")  # fmt: skip
    results = run_probe.main(argv)
    output = tmp_path / "linear"
    assert {"probe_results.json", "probe_results.md", "accuracy_vs_lr.png", "config.json", "run_config.json"} <= set(
        os.listdir(output)
    )
    stored = json.loads((output / "probe_results.json").read_text())
    assert stored == json.loads(json.dumps(results))
    assert [(h["feature"], h["base_learning_rate"]) for h in stored["heads"]] == [
        ("cls", 0.1), ("cls", 1.0), ("mean", 0.1), ("mean", 1.0)
    ]  # fmt: skip
    assert stored["best"] in stored["heads"] and stored["training"]["lr_scale"] == 8 / 256
    assert {(e["feature"], e["k"]) for e in stored["knn"]} == {(f, k) for f in ("cls", "mean") for k in (5, 10)}
    assert stored["data"] == {"num_train": 32, "num_validation": 12, "num_classes": 4, "num_skipped_images": 0}
    assert stored["feature_cache"]["hits"] == {"train": False, "validation": False}
    markdown = (output / "probe_results.md").read_text()
    assert "| base lr | lr | cls | mean |" in markdown and "## kNN" in markdown
    assert Image.open(output / "accuracy_vs_lr.png").size == (960, 560)

    # the saved classifier is the best head: same accuracy on the validation images
    classifier = AutoModelForImageClassification.from_pretrained(output).eval()
    assert classifier.config.feature == stored["best"]["feature"] and classifier.config.id2label[1] == "square"
    validation = datasets.load_from_disk(dummy_data["hf"])["validation"]
    images = torch.stack([probe_eval_transform(32)(image.convert("RGB")) for image in validation["image"]])
    with torch.no_grad():
        predictions = classifier(images).logits.argmax(-1)
    accuracy = (predictions == torch.tensor(validation["label"])).float().mean().item()
    assert accuracy == pytest.approx(stored["best"]["top1"])

    # second run: both splits come from the cache; knn only
    argv = _argv(encoder_dir, tmp_path / "knn", "--dataset_name", dummy_data["hf"], "--feature_cache_dir", str(cache),
                 "--pooling", "cls", "mean", "--mode", "knn")  # fmt: skip
    again = run_probe.main(argv)
    assert again["feature_cache"]["hits"] == {"train": True, "validation": True} and "heads" not in again
    assert {e["k"] for e in again["knn"]} == {10, 20, 32}  # 100 and 200 clipped to the 32 training images
    assert not (tmp_path / "knn" / "accuracy_vs_lr.png").exists()


@pytest.mark.slow
def test_run_probe_streaming_imagefolder_with_augmented_passes(encoder_dir, dummy_data, tmp_path):
    folder = dummy_data["folder"]
    results = run_probe.main(_argv(encoder_dir, tmp_path, "--train_dir", f"{folder}/train", "--validation_dir",
                                   f"{folder}/validation", "--streaming", "true", "--train_augment_passes", "2",
                                   "--pooling", "cls", "--learning_rates", "0.1", "--num_train_epochs", "1",
                                   "--per_device_train_batch_size", "8", "--save_classifier", "false",
                                   "--feature_cache_dir", str(tmp_path / "features")))  # fmt: skip
    assert results["data"]["num_train"] == 32 and results["data"]["num_validation"] == 8  # 2 passes x 16
    assert set(results["feature_cache"]["hits"]) == {"train (pass 1)", "train (pass 2)", "validation"}
    assert len(os.listdir(tmp_path / "features")) == 3
    assert not (tmp_path / "config.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["lora", "full"])
def test_run_probe_finetuning(encoder_dir, dummy_data, tmp_path, mode):
    results = run_probe.main(_argv(encoder_dir, tmp_path, "--dataset_name", dummy_data["hf"], "--mode", mode,
                                   "--max_steps", "2", "--per_device_train_batch_size", "8", "--learning_rate", "1e-3",
                                   "--save_strategy", "no", "--logging_steps", "1"))  # fmt: skip
    assert set(results["finetune"]) >= {"top1", "top5", "eval_loss"} and results["data"]["num_classes"] == 4
    classifier = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert isinstance(classifier, ProbeClassifier) and classifier.config.id2label[0] == "circle"
    assert not any("lora" in name for name, _ in classifier.named_parameters())  # LoRA merged into the weights
    assert "## Fine-tuning" in (tmp_path / "probe_results.md").read_text()


@pytest.mark.slow
def test_run_probe_encoder_checkpoint_alias_on_an_rae(dummy_data, tmp_path):
    """The seed framework's `--encoder_checkpoint` names a trained RAE: its encoder and latent are probed."""
    rae = tiny_rae()
    rae.set_latent_stats(None, 0.5 + torch.rand(32, 4, 4))
    rae.save_pretrained(tmp_path / "rae")
    argv = ["--encoder_checkpoint", str(tmp_path / "rae"), "--output_dir", str(tmp_path / "probe"), "--use_cpu", "true",
            "--dataset_name", dummy_data["hf"], "--pooling", "mean", "latent_mean", "--learning_rates", "0.1",
            "--num_train_epochs", "2", "--per_device_train_batch_size", "8", "--disable_tqdm", "true"]  # fmt: skip
    results = run_probe.main(argv)
    assert results["encoder"]["model_type"] == "dinov2_with_registers" and results["encoder"]["latent_norm_eps"]
    assert {head["feature"] for head in results["heads"]} == {"mean", "latent_mean"}
    classifier = AutoModelForImageClassification.from_pretrained(tmp_path / "probe")
    torch.testing.assert_close(classifier.encoder.latents_var, rae.latents_var)
