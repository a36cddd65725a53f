#!/usr/bin/env python
"""Throughput and memory of DINOv2 pretraining steps (`DinoTrainer`'s loss, backward, AdamW, teacher EMA).

Models are built from configs (nothing is downloaded); batches are synthetic, already collated views with iBOT masks
drawn by `MultiCropCollator` (data loading is not timed). A step: teacher forward on the 2 global crops, student
forward on the masked global crops and the local crops, DINO + iBOT + KoLeo losses with centring, backward,
per-module clipping, AdamW with the scheduled lr / weight decay, teacher EMA update.

    python benchmarks/bench_dino.py --backbone small --batch_size 64 --num_local_crops 8 --bf16 --header
    python benchmarks/bench_dino.py --backbone tiny --batch_size 8 --global_size 32 --local_size 16 --patch_size 4 \
        --head_out_dim 1024 --device cpu --steps 3

Prints one Markdown row (`--header` adds the header):
    | device | backbone | batch | local crops | precision | images/s | crops/s | s/step | peak memory |
Images/s counts source images (each gives 2 + N crops); peak memory is `torch.cuda.max_memory_allocated` on CUDA
and the process's peak resident set size on CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from common import emit, peak_memory_gib

from rae_hf.data.multicrop import MultiCropCollator
from rae_hf.models.dino import DINO_BACKBONE_SIZES, DinoConfig, DinoModel
from rae_hf.trainers.dino_config import DinoTrainingArguments
from rae_hf.trainers.dino_trainer import DinoTrainer

HEADER = (
    "| device | backbone | batch | local crops | precision | images/s | crops/s | s/step | peak memory |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", choices=sorted(DINO_BACKBONE_SIZES), default="small")
    parser.add_argument("--patch_size", type=int, default=16)
    parser.add_argument("--batch_size", type=int, default=32, help="Images per step (each gives 2 + N crops).")
    parser.add_argument("--num_local_crops", type=int, default=8)
    parser.add_argument("--global_size", type=int, default=224)
    parser.add_argument("--local_size", type=int, default=96)
    parser.add_argument("--head_out_dim", type=int, default=65536)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--header", action="store_true")
    parser.add_argument("--json", default=None)
    return parser.parse_args()


def synthetic_batch(args: argparse.Namespace, device: torch.device) -> dict:
    """Collated views (random pixels) and iBOT masks for `batch_size` images."""
    grid = args.global_size // args.patch_size
    batch = MultiCropCollator(grid).masks(2 * args.batch_size, torch.Generator().manual_seed(0))
    batch["global_crops"] = torch.randn(2 * args.batch_size, 3, args.global_size, args.global_size)
    if args.num_local_crops:
        size = args.local_size
        batch["local_crops"] = torch.randn(args.num_local_crops * args.batch_size, 3, size, size)
    return {key: value.to(device) for key, value in batch.items()}


def main() -> None:
    args = parse()
    device = torch.device(args.device)
    # A fresh DINOv2 backbone of the preset's size, with run_dino_pretrain's defaults (LayerScale 1e-5, drop path 0.3).
    backbone = dict(model_type="dinov2", patch_size=args.patch_size, image_size=args.global_size)
    config = DinoConfig(
        backbone_preset=args.backbone,
        backbone_config=backbone | dict(layerscale_value=1e-5, drop_path_rate=0.3),
        head_out_dim=args.head_out_dim,
        image_size=args.global_size,
    )
    model = DinoModel(config).to(device)
    with tempfile.TemporaryDirectory() as output_dir:
        training_args = DinoTrainingArguments(
            output_dir=output_dir, use_cpu=device.type == "cpu", report_to="none", max_steps=1000, log_csv=False
        )
        trainer = DinoTrainer(model=model, args=training_args)
        optimizer = trainer.create_optimizer()
        scheduler = trainer.create_scheduler(1000, optimizer)
        ema = trainer.teacher_ema
        ema.on_train_begin(training_args, trainer.state, trainer.control)
        batch = synthetic_batch(args, device)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()
        model.train()

        def step() -> None:
            with autocast:
                loss = trainer.compute_loss(model, batch)
            loss.backward()
            for module in model.student.values():
                torch.nn.utils.clip_grad_norm_(module.parameters(), training_args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            trainer.state.global_step += 1
            ema.on_step_end(training_args, trainer.state, trainer.control)

        for _ in range(args.warmup):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = (time.perf_counter() - start) / args.steps
    images = args.batch_size / seconds
    result = {
        "images_per_second": images,
        "crops_per_second": images * (2 + args.num_local_crops),
        "seconds_per_step": seconds,
        "peak_memory_gib": peak_memory_gib(device),
    }
    size = f"{args.global_size}/{args.local_size} px, K {args.head_out_dim}"
    name = f"ViT-{args.backbone[0].upper()}/{args.patch_size} ({size})"
    row = (
        f"| {device.type} | {name} | {args.batch_size} | {args.num_local_crops} | {'bf16' if args.bf16 else 'fp32'} "
        f"| {images:.1f} | {result['crops_per_second']:.1f} | {seconds:.3f} | {result['peak_memory_gib']:.2f} GiB |"
    )
    emit(row, HEADER if args.header else None, result, vars(args), args.json)


if __name__ == "__main__":
    main()
