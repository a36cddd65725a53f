#!/usr/bin/env python
"""Throughput and memory of full RAE stage-1 training steps (`RAETrainer`) on synthetic images.

Every model is built from its config with random weights (nothing is downloaded): the frozen encoder (DINOv2-B with
registers, SigLIP2-B, MAE-B, or a tiny DINOv2 for smoke runs), the ViT decoder, optionally the discriminator (a
ViT-S/8-shaped frozen backbone + trainable heads, with the adaptive GAN weight) and LPIPS (random VGG16). A step is
exactly what training does: encoder forward, latent noise, decoder forward/backward, losses, AdamW step, EMA update,
and with `--gan` a discriminator update (on a fresh eval-mode reconstruction by the updated decoder, as the official
code). Images/s is measured after `--warmup` steps, over `--steps` steps.

`--loop official` times instead a plain PyTorch loop that follows the official stage-1 script step for step (written
from its description, same models): the discriminator heads keep `requires_grad` in the generator step, the
discriminator step re-runs the whole model (encoder included) in eval mode, and the EMA walks every parameter of the
model. Compare the two with separate invocations on the same machine (one process per loop). The JSON
(`--json_out`) also has `process_cpu_seconds_per_step`, less sensitive than wall time to other load on a shared CPU.

    python benchmarks/bench_rae.py --encoder dinov2-b --decoder ViT-XL --batch_size 64 --bf16 --gan --lpips --header
    python benchmarks/bench_rae.py --encoder tiny --decoder custom-small --batch_size 4 --steps 3 --device cpu
    python benchmarks/bench_rae.py --encoder dinov2-b --decoder custom --decoder_hidden_size 512 \
        --decoder_num_hidden_layers 8 --decoder_num_attention_heads 8 --decoder_intermediate_size 2048

Prints one Markdown table row (`--header` adds the header):
    | device | encoder | decoder | losses | batch | precision | images/s | s/step | peak memory |
Peak memory is `torch.cuda.max_memory_allocated` on CUDA (tensors only, not the allocator's cache) and the peak
resident set size of the process on CPU (everything, Python included). Under `accelerate launch`, images/s counts
all processes (batch is per process) and memory is that of process 0.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import statistics
import tempfile
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every model here is built from a config

import torch
import torch.nn.functional as F
import transformers
from common import emit, peak_memory_gib
from transformers import (
    Dinov2WithRegistersConfig,
    PrinterCallback,
    SiglipVisionConfig,
    TrainerCallback,
    ViTConfig,
    ViTMAEConfig,
    ViTModel,
)

from rae_hf.data import ImageCollator
from rae_hf.losses import LPIPSLoss, adaptive_gan_weight
from rae_hf.models.rae import DECODER_PRESETS, RAEConfig, RAEModel
from rae_hf.models.rae.discriminator import DinoDiscriminator
from rae_hf.trainers.rae_config import RAETrainingArguments
from rae_hf.trainers.rae_trainer import RAETrainer

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
NEVER = 10**9  # a GAN schedule step that is never reached

# name -> (encoder config factory, encoder input size, image mean, image std, default decoder patch)
ENCODERS = {
    # facebook/dinov2-with-registers-base: patch 14, 4 registers, native 518 (interpolated to 224)
    "dinov2-b": (
        lambda: Dinov2WithRegistersConfig(patch_size=14, image_size=518, num_register_tokens=4),
        224,
        IMAGENET_MEAN,
        IMAGENET_STD,
        16,
    ),
    # google/siglip2-base-patch16-256 is a fixed-resolution SigLIP vision tower (768 wide, 12 layers, patch 16)
    "siglip2-b": (lambda: SiglipVisionConfig(image_size=256, patch_size=16), 256, [0.5] * 3, [0.5] * 3, 16),
    # facebook/vit-mae-base: ViT-B/16 at 224, run at 256 as in the paper (mask_ratio 0 is set by RAEModel)
    "mae-b": (lambda: ViTMAEConfig(), 256, IMAGENET_MEAN, IMAGENET_STD, 16),
    # a tiny DINOv2 with registers (like `rae_hf.tools.make_tiny_models`): 64 px, patch 8 -> 8x8 tokens x 64
    "tiny": (
        lambda: Dinov2WithRegistersConfig(
            image_size=64,
            patch_size=8,
            hidden_size=64,
            num_hidden_layers=4,
            num_attention_heads=2,
            num_register_tokens=4,
        ),
        64,
        IMAGENET_MEAN,
        IMAGENET_STD,
        8,
    ),
}
# A benchmark-only decoder for CPU smoke runs; the real sizes are the presets (`DECODER_PRESETS`).
SMOKE_DECODERS = {
    "custom-small": {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 512},
}
DECODER_SIZES = {**DECODER_PRESETS, **SMOKE_DECODERS}
SIZE_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", choices=sorted(ENCODERS), default="dinov2-b")
    parser.add_argument(
        "--decoder",
        default="ViT-XL",
        help=f"One of {sorted(DECODER_SIZES)} or 'custom' (then give all four --decoder_* sizes); "
        "any --decoder_* size given overrides the chosen one.",
    )
    for name in SIZE_FIELDS:
        parser.add_argument(f"--decoder_{name}", type=int, default=None)
    parser.add_argument("--decoder_patch_size", type=int, default=None, help="Default: 16 (8 for --encoder tiny).")
    parser.add_argument("--batch_size", type=int, default=8, help="Images per device per step.")
    parser.add_argument("--steps", type=int, default=10, help="Timed steps (after the warm-up).")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed steps first (use more with --compile).")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (as the recipes on GPU).")
    parser.add_argument("--compile", action="store_true", help="torch.compile the RAE (TrainingArguments).")
    parser.add_argument("--gan", action="store_true", help="Discriminator updates + adaptive-weight GAN term.")
    parser.add_argument("--disc_input_size", type=int, default=224, help="Discriminator input size (paper: 224).")
    parser.add_argument("--lpips", action="store_true", help="LPIPS term (random VGG16 weights).")
    parser.add_argument("--gradient_checkpointing", action="store_true", help="Recompute decoder activations.")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--loop",
        choices=("ours", "official"),
        default="ours",
        help="RAETrainer ('ours') or a re-implementation of the official training loop.",
    )
    parser.add_argument("--json_out", default=None, help="Also write the result (and settings) as JSON here.")
    parser.add_argument("--header", action="store_true", help="Print the Markdown table header first.")
    args = parser.parse_args(argv)

    if args.decoder != "custom" and args.decoder not in DECODER_SIZES:
        parser.error(f"--decoder {args.decoder!r}: choose one of {sorted(DECODER_SIZES)} or 'custom'.")
    missing = [f"--decoder_{n}" for n in SIZE_FIELDS if getattr(args, f"decoder_{n}") is None]
    if args.decoder == "custom" and missing:
        parser.error(f"--decoder custom needs {missing}.")
    for name in ("batch_size", "steps", "warmup"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1.")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available.")
    return args


def decoder_arguments(args: argparse.Namespace) -> dict:
    """`RAEConfig` decoder arguments: `decoder_preset` when --decoder names a preset, and the sizes given (a smoke
    decoder's, then any --decoder_*), which win over the preset by RAEConfig's preset rule."""
    sizes = dict(SMOKE_DECODERS.get(args.decoder, {}))
    given = {name: getattr(args, f"decoder_{name}") for name in SIZE_FIELDS}
    sizes.update({name: value for name, value in given.items() if value is not None})
    preset = args.decoder if args.decoder in DECODER_PRESETS else None
    return {"decoder_preset": preset, **{f"decoder_{name}": value for name, value in sizes.items()}}


def decoder_sizes(args: argparse.Namespace) -> dict[str, int]:
    """The decoder sizes the run uses (for its label)."""
    config = RAEConfig(**decoder_arguments(args))
    return {name: getattr(config, f"decoder_{name}") for name in SIZE_FIELDS}


def decoder_label(args: argparse.Namespace) -> str:
    sizes = decoder_sizes(args)
    if args.decoder != "custom" and sizes == DECODER_SIZES[args.decoder]:
        return args.decoder
    return "custom {hidden_size}x{num_hidden_layers} h{num_attention_heads} mlp{intermediate_size}".format(**sizes)


def build_model(args: argparse.Namespace) -> RAEModel:
    make_config, input_size, mean, std, patch = ENCODERS[args.encoder]
    config = RAEConfig(
        encoder_config=make_config(),
        encoder_input_size=input_size,
        encoder_image_mean=mean,
        encoder_image_std=std,
        decoder_patch_size=args.decoder_patch_size or patch,
        noise_tau=0.8,
        **decoder_arguments(args),
    )
    model = RAEModel(config)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


def build_discriminator(args: argparse.Namespace) -> DinoDiscriminator:
    """ViT-S/8 shaped (DINO ViT-S/8) with --gan; otherwise a tiny one that never runs (RAETrainer requires one)."""
    if args.gan:
        backbone = ViTConfig(
            image_size=224,
            patch_size=8,
            hidden_size=384,
            num_hidden_layers=12,
            num_attention_heads=6,
            intermediate_size=1536,
        )
        return DinoDiscriminator(ViTModel(backbone, add_pooling_layer=False), input_size=args.disc_input_size)
    backbone = ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=12, num_attention_heads=2, intermediate_size=64
    )
    return DinoDiscriminator(ViTModel(backbone, add_pooling_layer=False), input_size=32)


class SyntheticImages(torch.utils.data.Dataset):
    """`length` random [0, 1] images of `size` px, served from a small bank of distinct tensors."""

    def __init__(self, length: int, size: int, bank: int = 32, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.rand(min(length, bank), 3, size, size, generator=generator)
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.images[index % len(self.images)]}


class StepTimer(TrainerCallback):
    """Wall-clock time at the end of every optimizer step (after the EMA update: added last), device synced."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.marks: dict[int, float] = {}
        self.cpu_marks: dict[int, float] = {}

    def on_step_end(self, args, state, control, **kwargs):
        if self.cuda:
            torch.cuda.synchronize()
        self.marks[state.global_step] = time.perf_counter()
        self.cpu_marks[state.global_step] = time.process_time()


def device_name(cuda: bool) -> str:
    if cuda:
        return torch.cuda.get_device_name()
    return f"CPU ({torch.get_num_threads()} threads)"


def run(args: argparse.Namespace) -> dict:
    transformers.set_seed(args.seed)
    cuda = args.device == "cuda"
    model = build_model(args)
    discriminator = build_discriminator(args)
    perceptual = LPIPSLoss(pretrained_backbone=False) if args.lpips else None
    gan_step = 0 if args.gan else NEVER
    total_steps = args.warmup + args.steps

    with tempfile.TemporaryDirectory(prefix="bench_rae_") as output_dir:
        training_args = RAETrainingArguments(
            output_dir=output_dir,
            max_steps=total_steps,
            per_device_train_batch_size=args.batch_size,
            bf16=args.bf16,
            use_cpu=not cuda,
            torch_compile=args.compile,
            report_to="none",
            save_strategy="no",
            logging_strategy="no",
            disable_tqdm=True,
            dataloader_num_workers=0,
            seed=args.seed,
            gan_schedule_unit="step",
            lpips_start=0,
            disc_upd_start=gan_step,
            disc_start=gan_step,
            perceptual_weight=1.0 if args.lpips else 0.0,
            lpips_pretrained_backbone=False,
            disc_input_size=args.disc_input_size,
        )
        length = args.batch_size * total_steps * training_args.world_size
        dataset = SyntheticImages(length, model.config.image_size, seed=args.seed)
        trainer = RAETrainer(
            model=model,
            args=training_args,
            discriminator=discriminator,
            perceptual_loss=perceptual,
            train_dataset=dataset,
            data_collator=ImageCollator(),
        )
        trainer.remove_callback(PrinterCallback)  # keep stdout for the result row
        timer = StepTimer(cuda)
        trainer.add_callback(timer)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        trainer.train()

    marks = timer.marks
    if sorted(marks) != list(range(1, total_steps + 1)):
        raise RuntimeError(f"Expected {total_steps} optimizer steps, timed {sorted(marks)}.")
    durations = [marks[s] - marks[s - 1] for s in range(args.warmup + 1, total_steps + 1)]
    seconds_per_step = (marks[total_steps] - marks[args.warmup]) / args.steps
    cpu_seconds_per_step = (timer.cpu_marks[total_steps] - timer.cpu_marks[args.warmup]) / args.steps
    world = trainer.accelerator.num_processes
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    precision = ("bf16" if args.bf16 else "fp32") + ("+compile" if args.compile else "")
    losses = "L1" + ("+LPIPS" if args.lpips else "") + ("+GAN" if args.gan else "")
    return {
        "device": device_name(cuda),
        "encoder": args.encoder,
        "decoder": decoder_label(args),
        "losses": losses + ("+ckpt" if args.gradient_checkpointing else ""),
        "batch": args.batch_size,
        "processes": world,
        "precision": precision,
        "images_per_second": args.batch_size * world / seconds_per_step,
        "seconds_per_step": seconds_per_step,
        "seconds_per_step_median": statistics.median(durations),
        "seconds_per_step_max": max(durations),
        "process_cpu_seconds_per_step": cpu_seconds_per_step,
        "peak_memory_gib": peak_memory_gib(torch.device("cuda" if cuda else "cpu")),
        "peak_memory_kind": "cuda max_memory_allocated" if cuda else "process peak RSS",
        "image_size": model.config.image_size,
        "decoder_trainable_parameters": trainable,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "is_main_process": trainer.is_world_process_zero(),
    }


def _hinge(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def run_official(args: argparse.Namespace) -> dict:
    """Time the official stage-1 step (see the module docstring) on the same models, settings and data."""
    transformers.set_seed(args.seed)
    cuda = args.device == "cuda"
    device = torch.device(args.device)
    model = build_model(args).to(device).train()
    discriminator = build_discriminator(args).to(device)
    perceptual = LPIPSLoss(pretrained_backbone=False).to(device) if args.lpips else None
    ema = copy.deepcopy(model).requires_grad_(False)
    fused = {"fused": True} if cuda else {"foreach": True}
    optimizer = torch.optim.AdamW(model.decoder.parameters(), lr=2e-4, betas=(0.9, 0.95), weight_decay=0.0, **fused)
    disc_params = [p for p in discriminator.parameters() if p.requires_grad]
    disc_optimizer = torch.optim.AdamW(disc_params, lr=2e-4, betas=(0.9, 0.95), weight_decay=0.0, **fused)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    disc_scheduler = torch.optim.lr_scheduler.LambdaLR(disc_optimizer, lambda s: 1.0)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
    size = model.config.image_size
    data = SyntheticImages(args.batch_size * (args.warmup + args.steps), size, seed=args.seed)
    ema_pairs = list(zip(ema.parameters(), model.parameters(), strict=True))

    def step(images: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        discriminator.eval()
        with autocast:
            recon = model(images).reconstruction
            rec_loss = (recon - images).abs().mean()
            if perceptual is not None:
                rec_loss = rec_loss + perceptual(recon.float(), images)
            loss = rec_loss
            if args.gan:
                gan_loss = -discriminator(recon.float()).mean()
        if args.gan:
            weight = adaptive_gan_weight(rec_loss, gan_loss, model.decoder_last_layer_weight())
            loss = rec_loss + 0.75 * weight * gan_loss
        loss.backward()
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            for shadow, param in ema_pairs:
                shadow.mul_(0.9978).add_(param, alpha=1 - 0.9978)
        if args.gan:
            model.eval()
            discriminator.train()
            disc_optimizer.zero_grad(set_to_none=True)
            with autocast:
                with torch.no_grad():
                    fresh = model(images).reconstruction
                fake = torch.round(fresh.clamp(0.0, 1.0) * 255.0) / 255.0
                logits_fake = discriminator(fake)
                d_loss = _hinge(discriminator(images), logits_fake)
            d_loss.backward()
            disc_optimizer.step()
            disc_scheduler.step()
            discriminator.eval()
            model.train()

    marks, cpu_marks = [], []
    for index in range(args.warmup + args.steps):
        batch = data.images[torch.arange(index * args.batch_size, (index + 1) * args.batch_size) % len(data.images)]
        step(batch.to(device))
        if cuda:
            torch.cuda.synchronize()
        marks.append(time.perf_counter())
        cpu_marks.append(time.process_time())
    durations = [b - a for a, b in zip(marks[args.warmup - 1 : -1], marks[args.warmup :], strict=True)]
    seconds_per_step = (marks[-1] - marks[args.warmup - 1]) / args.steps
    losses = "L1" + ("+LPIPS" if args.lpips else "") + ("+GAN" if args.gan else "")
    return {
        "device": device_name(cuda),
        "encoder": args.encoder,
        "decoder": decoder_label(args),
        "losses": losses + (" (official loop)" if args.gan else " (plain loop)"),
        "batch": args.batch_size,
        "processes": 1,
        "precision": "bf16" if args.bf16 else "fp32",
        "images_per_second": args.batch_size / seconds_per_step,
        "seconds_per_step": seconds_per_step,
        "seconds_per_step_median": statistics.median(durations),
        "seconds_per_step_max": max(durations),
        "process_cpu_seconds_per_step": (cpu_marks[-1] - cpu_marks[args.warmup - 1]) / args.steps,
        "peak_memory_gib": peak_memory_gib(device),
        "peak_memory_kind": "cuda max_memory_allocated" if cuda else "process peak RSS",
        "image_size": size,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "is_main_process": True,
    }


HEADER = (
    "| device | encoder | decoder | losses | batch | precision | images/s | s/step | peak memory |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def markdown_row(result: dict) -> str:
    batch = str(result["batch"]) + (f" x {result['processes']}" if result["processes"] > 1 else "")
    return (
        f"| {result['device']} | {result['encoder']} | {result['decoder']} | {result['losses']} | {batch} | "
        f"{result['precision']} | {result['images_per_second']:.2f} | {result['seconds_per_step']:.3f} | "
        f"{result['peak_memory_gib']:.2f} GiB |"
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    transformers.logging.set_verbosity_error()
    logging.getLogger("rae_hf").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
    result = run(args) if args.loop == "ours" else run_official(args)
    if not result.pop("is_main_process"):
        return
    emit(markdown_row(result), HEADER if args.header else None, result, vars(args), args.json_out)


if __name__ == "__main__":
    main()
