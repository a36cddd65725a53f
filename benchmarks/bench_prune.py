#!/usr/bin/env python
"""Dense vs masked vs shrunk ViT variants: parameters, FLOPs, inference and training speed at given sparsities.

For each sparsity s, the dense preset (random weights, nothing downloaded) gets one global magnitude step removing
s of the targeted weights, then Refill (fillback 0, magnitude criterion) turns it into whole heads / MLP channels:
- masked: the full-size model with zeros (what `torch.nn.utils.prune`-style pruning gives: no speed-up);
- shrunk: `shrink_model` of it (fewer heads and MLP channels per block; same logits).
Training speed = forward + backward + SGD step (+ mask enforcement for the masked model) on random images.

    python benchmarks/bench_prune.py --preset vit_tiny --sparsity 0.5 0.8 --header
    python benchmarks/bench_prune.py --preset vit_small_imagenet --device cuda --precision bf16 --batch_size 128

Prints Markdown rows: | device | model | sparsity | variant | params | GFLOPs | infer img/s | latency ms (batch 1) |
| train img/s | max logit diff |
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from rae_hf.models.vit import ViTVariantConfig, ViTVariantForImageClassification
from rae_hf.prune import (
    MaskSet,
    count_parameters,
    dense_masks,
    global_magnitude_masks,
    refill_masks,
    shrink_model,
    unit_groups,
    vit_flops,
)

HEADER = (
    "| device | model | sparsity | variant | params | GFLOPs | infer img/s | latency ms (batch 1) | train img/s "
    "| max logit diff |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
)


def structured(model: ViTVariantForImageClassification, sparsity: float) -> MaskSet:
    """Refill masks (heads / MLP channels) after removing `sparsity` of the targeted weights by magnitude."""
    groups = unit_groups(model)
    names = [member.name for group in groups for member in group.weights]
    magnitude = global_magnitude_masks(dict(model.named_parameters()), dense_masks(model, names), sparsity)
    masks, _ = refill_masks(model, groups, magnitude, 0.0, "magnitude")
    return masks


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_it(function, steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per call (after warm-up)."""
    for _ in range(warmup):
        function()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        function()
    sync(device)
    return (time.perf_counter() - start) / steps


def measure(model, masks: MaskSet | None, args, device: torch.device, dtype: torch.dtype) -> dict[str, float]:
    """Inference images/s (batch), latency (batch 1), training images/s."""
    size = model.config.image_size
    images = torch.randn(args.batch_size, 3, size, size, device=device)
    one = images[:1]
    labels = torch.randint(0, model.config.num_labels, (args.batch_size,), device=device)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    model.eval()
    with torch.no_grad(), autocast:
        infer = time_it(lambda: model(images), args.steps, args.warmup, device)
        latency = time_it(lambda: model(one), args.steps, args.warmup, device)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = model(images, labels=labels).loss
        loss.backward()
        if masks is not None:
            masks.mask_gradients(model)
        optimizer.step()
        if masks is not None:
            masks.apply(model)

    train = time_it(train_step, args.steps, args.warmup, device)
    model.eval()
    return {"infer": args.batch_size / infer, "latency_ms": 1000 * latency, "train": args.batch_size / train}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="vit_tiny")
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.8])
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--header", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    torch.manual_seed(0)
    dense = ViTVariantForImageClassification(ViTVariantConfig(preset=args.preset)).to(device).eval()
    if args.header:
        print(HEADER)
    label = f"{device.type}{'' if device.type == 'cpu' else ' ' + torch.cuda.get_device_name(device)}"
    label += f" {args.precision}" + (f" {torch.get_num_threads()} threads" if device.type == "cpu" else "")
    speed = measure(dense, None, args, device, dtype)
    print(
        f"| {label} | {args.preset} | 0 | dense | {count_parameters(dense) / 1e6:.2f}M | "
        f"{vit_flops(dense.config) / 1e9:.3f} | {speed['infer']:.0f} | {speed['latency_ms']:.2f} | "
        f"{speed['train']:.0f} | - |",
        flush=True,
    )
    for sparsity in args.sparsity:
        masked = ViTVariantForImageClassification(dense.config).to(device)
        masked.load_state_dict(dense.state_dict())
        masks = structured(masked, sparsity)
        masks.apply(masked)
        small = shrink_model(masked.eval())
        probe = torch.randn(8, 3, dense.config.image_size, dense.config.image_size, device=device)
        with torch.no_grad():
            difference = (small(probe).logits - masked(probe).logits).abs().max().item()
        rows = (("masked", masked, masks, count_parameters(masked, nonzero=True), dense.config),
                ("shrunk", small, None, count_parameters(small), small.config))  # fmt: skip
        for variant, model, model_masks, params, config in rows:
            speed = measure(model, model_masks, args, device, dtype)
            print(
                f"| {label} | {args.preset} | {sparsity:g} | {variant} | {params / 1e6:.2f}M | "
                f"{vit_flops(config) / 1e9:.3f} | {speed['infer']:.0f} | {speed['latency_ms']:.2f} | "
                f"{speed['train']:.0f} | {difference:.1e} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
