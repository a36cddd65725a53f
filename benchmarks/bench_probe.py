#!/usr/bin/env python
"""End-to-end speed of a linear probe with cached features vs re-running the frozen encoder every epoch.

Both paths train the same grid of linear heads (learning rates x feature variants, one optimizer) for `--epochs`
epochs with the same seed on the same synthetic images (shapes on gradients, 4 classes), with a random-weight encoder
built from a config (nothing is downloaded), and evaluate every head on a validation split:

- uncached: every batch of every epoch, and of the evaluation, runs the encoder again (`EncoderFeatureSource`);
- cached: one encoder pass per split (`extract_features`), then each epoch costs only the heads;
- disk: the same through `FeatureCache` on disk (`datasets` Arrow): a first run extracts and writes, a second run
  only reads the features back.

    python benchmarks/bench_probe.py --encoder tiny --num_train 256 --epochs 10 --header
    python benchmarks/bench_probe.py --encoder small --num_train 512 --epochs 10 --threads 1
    python benchmarks/bench_probe.py --encoder dinov2-b --num_train 4096 --device cuda --precision bf16

Prints one Markdown table row (`--header` adds the header):
    | device | encoder | images | epochs | heads | uncached s | cached s (extract + heads) | speedup | disk: 1st run s |
    | disk: reuse s | same accuracy |
"cached s" is extraction + heads + evaluation; "disk: reuse s" is reading the cache + heads + evaluation. "same
accuracy" compares the best head of the cached and uncached paths (features rounded to the same storage dtype).
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every model here is built from a config

import datasets
import torch
import transformers
from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel
from transformers.utils.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from rae_hf.models.dino import DINO_BACKBONE_SIZES
from rae_hf.probe import (
    CachedFeatureSource,
    ComponentSpec,
    EncoderFeatureSource,
    FeatureCache,
    LinearHeadGrid,
    ProbeEncoder,
    evaluate_heads,
    extract_features,
    feature_description,
    feature_variants,
    iter_components,
    train_heads,
)
from rae_hf.probe.data import labeled_split, probe_eval_transform
from rae_hf.probe.features import feature_loader
from rae_hf.tools.make_dummy_dataset import CLASS_NAMES, make_dummy_images

IMAGENET_MEAN = tuple(IMAGENET_DEFAULT_MEAN)
IMAGENET_STD = tuple(IMAGENET_DEFAULT_STD)

# name -> (DINOv2-with-registers config kwargs, input size); the ViT-S/B shapes are the DINO backbone presets.
ENCODERS = {
    "tiny": (dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=2, intermediate_size=256, patch_size=8), 64),
    "small": (dict(DINO_BACKBONE_SIZES["small"], patch_size=14), 112),  # DINOv2-S/14 at 112 px: 8x8 patch tokens
    "dinov2-b": (dict(DINO_BACKBONE_SIZES["base"], patch_size=14), 224),  # DINOv2-B/14 at 224 px: 16x16 tokens
}
HEADER = (
    "| device | encoder | images | epochs | heads | uncached s | cached s (extract + heads) | speedup "
    "| disk: 1st run s | disk: reuse s | same accuracy |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- "
    "| --- |"
)


def build_encoder(name: str) -> ProbeEncoder:
    kwargs, size = ENCODERS[name]
    torch.manual_seed(0)
    config = Dinov2WithRegistersConfig(image_size=size, num_register_tokens=4, **kwargs)
    encoder = ProbeEncoder(Dinov2WithRegistersModel(config), size, IMAGENET_MEAN, IMAGENET_STD, name_or_path=name)
    return encoder.requires_grad_(False).eval()


def synthetic_split(count: int, size: int, seed: int, transform) -> datasets.Dataset:
    images = make_dummy_images(count, size, seed)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(CLASS_NAMES))})
    raw = datasets.Dataset.from_dict(
        {"image": [image for image, _ in images], "label": [label for _, label in images]}, features=features
    )
    return labeled_split(raw, "image", "label", transform)


def run_heads(encoder, train_source, validation_source, variants, args) -> float:
    """Train the grid and return the best validation top-1."""
    heads = LinearHeadGrid(
        {variant.name: variant.dim(encoder) for variant in variants}, args.learning_rates, len(CLASS_NAMES), seed=0
    )
    train_heads(
        heads, train_source, num_epochs=args.epochs, batch_size=args.batch_size, device=args.device, progress=False
    )
    accuracy = evaluate_heads(heads, validation_source, args.extract_batch_size, args.device)
    return max(entry["top1"] for entry in accuracy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", choices=sorted(ENCODERS), default="tiny")
    parser.add_argument("--num_train", type=int, default=256)
    parser.add_argument("--num_validation", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=64, help="Heads batch size.")
    parser.add_argument("--extract_batch_size", type=int, default=64)
    parser.add_argument("--learning_rates", type=float, nargs="+", default=[1e-3, 1e-2, 0.1, 1.0])
    parser.add_argument("--pooling", nargs="+", default=["cls", "mean", "cls_mean"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads on CPU.")
    parser.add_argument("--header", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    transformers.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    args.device = torch.device(args.device)

    encoder = build_encoder(args.encoder).to(args.device)
    transform = probe_eval_transform(encoder.image_size, crop_pct=1.0)
    train = synthetic_split(args.num_train, encoder.image_size, 0, transform)
    validation = synthetic_split(args.num_validation, encoder.image_size, 1, transform)
    variants = feature_variants(args.pooling)
    spec = ComponentSpec.for_variants(variants)
    storage = torch.float16

    def extract(split):
        return extract_features(
            encoder, split, spec, batch_size=args.extract_batch_size, device=args.device, precision=args.precision,
            storage_dtype=storage, desc=None,
        )  # fmt: skip

    def encoder_source(split):
        return EncoderFeatureSource(encoder, split, variants, args.device, args.precision, storage)

    start = time.perf_counter()
    uncached_top1 = run_heads(encoder, encoder_source(train), encoder_source(validation), variants, args)
    uncached = time.perf_counter() - start

    start = time.perf_counter()
    cached_train, cached_validation = extract(train), extract(validation)
    extraction = time.perf_counter() - start
    cached_top1 = run_heads(
        encoder,
        CachedFeatureSource(cached_train, variants, args.device),
        CachedFeatureSource(cached_validation, variants, args.device),
        variants,
        args,
    )
    cached = time.perf_counter() - start

    disk_times = []
    with tempfile.TemporaryDirectory() as root:
        cache = FeatureCache(root)
        for _ in range(2):  # first run extracts and writes, second run reads
            start = time.perf_counter()
            sets = []
            for name, split in (("train", train), ("validation", validation)):
                description = feature_description(
                    encoder, spec, repr(transform), name, name, len(split), args.precision, storage
                )
                loader = feature_loader(split, args.extract_batch_size)
                features, _ = cache.get_or_extract(
                    description,
                    lambda loader=loader: iter_components(encoder, loader, spec, args.device, args.precision, storage),
                    spec.shapes(encoder),
                )
                sets.append(CachedFeatureSource(features, variants, args.device))
            run_heads(encoder, *sets, variants, args)
            disk_times.append(time.perf_counter() - start)

    device = (
        torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    )
    heads = len(variants) * len(args.learning_rates)
    same = "yes" if abs(cached_top1 - uncached_top1) < 1e-9 else f"no ({cached_top1:.3f} vs {uncached_top1:.3f})"
    if args.header:
        print(HEADER)
    print(
        f"| {device} | {args.encoder} ({encoder.image_size} px) | {args.num_train}+{args.num_validation} | "
        f"{args.epochs} | {heads} | {uncached:.1f} | {cached:.1f} ({extraction:.1f} + {cached - extraction:.1f}) | "
        f"{uncached / cached:.1f}x | {disk_times[0]:.1f} | "
        f"{disk_times[1]:.1f} | {same} |"
    )


if __name__ == "__main__":
    main()
