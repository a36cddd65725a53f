"""RAE stage 2 throughput: training images/s of a DiT-DH fed from a latent cache vs encoded on the fly by the frozen RAE
(and their ratio), sampling images/s (Euler, decoded by the RAE), peak memory, and our network's training step vs the
official-style network (tests/dit/official_dit_reference.py, same weights and size) as a ratio. Random weights and
data; nothing is downloaded.

    python benchmarks/bench_dit.py --header                                         # CPU: the quickstart's sizes
    python benchmarks/bench_dit.py --device cuda --preset DiTDH-XL --image_size 224 --encoder_hidden_size 768 \
        --encoder_layers 12 --encoder_heads 12 --patch_size 14 --hidden_size 0 --num_hidden_layers 0 \
        --num_attention_heads 0 --head_hidden_size 0 --head_num_attention_heads 0 --batch_size 64 --header
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time

import numpy as np
import torch
from common import emit, peak_memory_gib
from PIL import Image
from transformers import Dinov2WithRegistersConfig

from rae_hf.data import image_transform
from rae_hf.data.latent_cache import CachedLatentDataset, LatentCollator
from rae_hf.models.dit import DiTDHConfig, DiTDHModel
from rae_hf.models.rae import RAEConfig, RAEModel
from rae_hf.pipelines.pipeline_rae_dit import RAEDiTPipeline
from rae_hf.trainers.dit_config import DiTTrainingArguments
from rae_hf.trainers.dit_trainer import DiTTrainer

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "dit"))
try:
    from official_dit_reference import DiTwDDTHead
except ImportError:  # the reference lives in the test tree
    DiTwDDTHead = None

HEADER = (
    "| device | DiT | latent | batch | precision | train img/s cached | train img/s on the fly | cache speed-up: step "
    "/ with loading | sample img/s (steps) | ours / official step | peak memory |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
)


CLOCK = time.perf_counter  # --cpu_clock: time.process_time (CPU seconds of this process: shared machines, 1 thread)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def now() -> float:
    return CLOCK()


def build(args: argparse.Namespace, device: torch.device) -> tuple[RAEModel, DiTDHModel]:
    encoder = Dinov2WithRegistersConfig(
        image_size=args.image_size,
        patch_size=args.patch_size,
        hidden_size=args.encoder_hidden_size,
        num_hidden_layers=args.encoder_layers,
        num_attention_heads=args.encoder_heads,
        intermediate_size=4 * args.encoder_hidden_size,
        num_register_tokens=4,
    )
    rae = RAEModel(
        RAEConfig(
            encoder_config=encoder,
            encoder_input_size=args.image_size,
            decoder_hidden_size=args.decoder_hidden_size,
            decoder_num_hidden_layers=args.decoder_layers,
            decoder_num_attention_heads=max(1, args.decoder_hidden_size // 64),
            decoder_intermediate_size=4 * args.decoder_hidden_size,
            decoder_patch_size=args.patch_size,
        )
    )
    channels, grid = rae.config.latent_channels, rae.config.latent_grid_size
    rae.set_latent_stats(torch.zeros(channels, grid, grid), torch.ones(channels, grid, grid) * 2)
    names = ("hidden_size", "num_hidden_layers", "num_attention_heads", "head_hidden_size", "head_num_attention_heads")
    sizes = {k: getattr(args, k) for k in names if getattr(args, k)}
    config = DiTDHConfig.from_preset(args.preset, in_channels=channels, input_size=grid, num_classes=10, **sizes)
    return rae.to(device).eval(), DiTDHModel(config).to(device)


def train_rate(trainer: DiTTrainer, batches: list[dict], device: torch.device, steps: int, bf16: bool) -> float:
    """Images/s of `compute_loss` + backward + AdamW over `batches` (the first one warms up)."""
    model, optimizer = trainer.model, torch.optim.AdamW(trainer.model.parameters(), lr=1e-4, betas=(0.9, 0.95))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    model.train()
    start, images = None, 0
    for index in range(steps + 1):
        if index == 1:
            sync(device)
            start = now()
        batch = {k: v.to(device) for k, v in batches[index % len(batches)].items()}
        with autocast:
            loss = trainer.compute_loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        images += batch["labels"].shape[0] if index else 0
    sync(device)
    return images / (now() - start)


def loader_rates(args: argparse.Namespace, latents: torch.Tensor, count: int = 32) -> tuple[float, float]:
    """Items/s of one data process: on the fly (PNG decode at 1.5x the size, ADM crop, flip) vs the latent cache
    (a memory-mapped `.npy` read, flip drawn per item)."""
    generator = torch.Generator().manual_seed(1)
    side = round(args.image_size * 1.5)
    pngs = []
    for _ in range(count):
        array = (torch.rand(side, side, 3, generator=generator) * 255).to(torch.uint8).numpy()
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    transform = image_transform("adm_center_crop", args.image_size, hflip=True)
    start = now()
    for data in pngs:
        transform(Image.open(io.BytesIO(data)).convert("RGB"))
    fly = count / (now() - start)
    with tempfile.TemporaryDirectory() as folder:
        both = torch.stack([latents, latents.flip(-1)], dim=1).numpy()
        paths = [os.path.join(folder, "latents.npy"), os.path.join(folder, "labels.npy")]
        np.save(paths[0], both)
        np.save(paths[1], np.zeros(len(both), dtype=np.int64))
        dataset = CachedLatentDataset([(*paths, len(both))])
        start = now()
        for index in range(count):
            dataset[index % len(dataset)]
        cached = count / (now() - start)
    return fly, cached


def official_ratio(model: DiTDHModel, batch: int, device: torch.device, steps: int) -> float | None:
    """Our forward + backward time / the official-style network's (same weights), fp32."""
    if DiTwDDTHead is None:
        return None
    c = model.config
    official = DiTwDDTHead(
        c.input_size,
        c.in_channels,
        (c.hidden_size, c.head_hidden_size),
        (c.num_hidden_layers, c.head_num_layers),
        (c.num_attention_heads, c.head_num_attention_heads),
        num_classes=c.num_classes,
    ).to(device)
    official.load_state_dict(model.state_dict())
    official.train()
    x = torch.randn(batch, *c.latent_shape, device=device)
    t, y = torch.rand(batch, device=device), torch.randint(0, c.num_classes, (batch,), device=device)
    times = []
    for network, call in ((model, lambda: model(x, t, y).prediction), (official, lambda: official(x, t, y))):
        network.train()
        for index in range(steps + 1):
            if index == 1:
                sync(device)
                start = now()
            call().square().mean().backward()
        sync(device)
        times.append(now() - start)
    return times[0] / times[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", default="DiTDH-S")
    parser.add_argument("--hidden_size", type=int, default=128)
    parser.add_argument("--num_hidden_layers", type=int, default=4)
    parser.add_argument("--num_attention_heads", type=int, default=4)
    parser.add_argument("--head_hidden_size", type=int, default=256)
    parser.add_argument("--head_num_attention_heads", type=int, default=4)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--patch_size", type=int, default=8)
    parser.add_argument("--encoder_hidden_size", type=int, default=64)
    parser.add_argument("--encoder_layers", type=int, default=4)
    parser.add_argument("--encoder_heads", type=int, default=2)
    parser.add_argument("--decoder_hidden_size", type=int, default=128)
    parser.add_argument("--decoder_layers", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--sample_steps", type=int, default=49)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch threads on CPU (default: torch's)")
    parser.add_argument("--cpu_clock", action="store_true", help="time with this process's CPU seconds (1 thread)")
    parser.add_argument("--header", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    global CLOCK
    if args.cpu_clock:
        CLOCK = time.process_time
    device = torch.device(args.device)
    torch.manual_seed(0)
    rae, model = build(args, device)
    training = DiTTrainingArguments(output_dir="/tmp/bench_dit", use_cpu=device.type == "cpu", report_to="none")
    trainer = DiTTrainer(model=model, args=training, rae=rae, train_dataset=[0], data_collator=LatentCollator())
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(args.batch_size, 3, args.image_size, args.image_size, generator=generator) for _ in range(2)]
    labels = torch.randint(0, 10, (args.batch_size,), generator=generator)
    on_the_fly = [{"pixel_values": image, "labels": labels} for image in images]
    with torch.no_grad():
        cached = [
            {"latents": rae.encode(b["pixel_values"].to(device)).latents.cpu(), "labels": labels} for b in on_the_fly
        ]
    rate_cached = train_rate(trainer, cached, device, args.steps, args.bf16)
    rate_fly = train_rate(trainer, on_the_fly, device, args.steps, args.bf16)
    pipe = RAEDiTPipeline(transformer=model.eval(), vae=rae)
    pipe.set_progress_bar_config(disable=True)
    sync(device)
    start = now()
    pipe(labels.to(device), num_inference_steps=args.sample_steps, output_type="pt")
    sync(device)
    sample_rate = args.batch_size / (now() - start)
    ratio = official_ratio(model, args.batch_size, device, args.steps)
    load_fly, load_cached = loader_rates(args, cached[0]["latents"])
    end_fly, end_cached = (
        1 / (1 / step + 1 / load) for step, load in ((rate_fly, load_fly), (rate_cached, load_cached))
    )
    c = model.config
    result = {
        "train_images_per_s_cached": rate_cached,
        "train_images_per_s_on_the_fly": rate_fly,
        "cache_speedup": rate_cached / rate_fly,
        "loader_items_per_s_on_the_fly": load_fly,
        "loader_items_per_s_cached": load_cached,
        "end_to_end_speedup_one_process": end_cached / end_fly,
        "sample_images_per_s": sample_rate,
        "ours_over_official_step": ratio,
        "peak_memory_gib": peak_memory_gib(device),
        "threads": torch.get_num_threads(),
    }
    ratio_text = f"{ratio:.2f}" if ratio is not None else "pending (no official reference)"
    row = (
        f"| {device.type} ({torch.get_num_threads()} threads{', CPU clock' if args.cpu_clock else ''}) | "
        f"{c.hidden_size}x{c.num_hidden_layers} + "
        f"{c.head_hidden_size}x{c.head_num_layers} | {c.in_channels}x{c.input_size}x{c.input_size} | "
        f"{args.batch_size} | "
        f"{'bf16' if args.bf16 else 'fp32'} | {rate_cached:.1f} | {rate_fly:.1f} | {rate_cached / rate_fly:.2f}x / "
        f"{end_cached / end_fly:.2f}x | "
        f"{sample_rate:.1f} ({args.sample_steps}) | {ratio_text} | {result['peak_memory_gib']:.2f} GiB |"
    )
    emit(row, HEADER if args.header else None, result, vars(args), args.json)


if __name__ == "__main__":
    main()
