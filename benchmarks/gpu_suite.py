#!/usr/bin/env python
"""One prepared GPU run: every method at its published size against the official approach, in one call.

    python benchmarks/gpu_suite.py --out runs/gpu_suite            # one H100: < 8 minutes
    python benchmarks/gpu_suite.py --dry-run --out /tmp/suite      # same code path, tiny sizes, CPU, < 2 minutes

First `pytest -m "gpu and not slow" tests/gpu` (the quick CUDA-only tests; skipped without CUDA), then for each
method a few warm-up steps and `--steps` timed steps with random weights (nothing is downloaded): images/s, peak
memory, FLOPs per image of our step (counted by `torch.utils.flop_counter.FlopCounterMode` on one eager step at a
small batch, or by the method's formula; a method's baseline rows use the same count: the useful work), MFU of the
bf16 rows against the device's dense bf16 peak (H100 SXM / H200: 989 TFLOPS, H100 PCIe: 756, A100: 312; other
devices: no MFU) and, where a baseline exists, our images/s divided by the baseline's (same device, same run).

Methods (the baselines are the benchmark scripts' own re-implementations, imported from them):
- rae: stage-1 step, DINOv2-B encoder, ViT-XL decoder, 256 px, L1 + LPIPS + GAN with the discriminator step
  (`bench_rae.run`) vs the official loop's structure (`bench_rae.run_official`);
- jit: JiT-B/16 at 256 training step with SDPA vs the official fp32 hand-written attention (`bench_jit.bench`);
- dino: DINO ViT-S/16 step, 2 global (224) + 8 local (96) crops (no baseline in this repository);
- probe: ViT-B/14 feature extraction at 224 (`iter_components`) vs a plain fp32 eager-attention forward;
- prune: ViT-S/16 round step under structured masks, and the shrunk model's inference vs the dense model's (50%);
- fid: Inception-v3 feature extraction at 299 (random weights; target >= 2000 images/s on an H100);
- dit: stage-2 DiT-DH-XL step on 16x16x768 latents vs the official DiTwDDTHead (tests/dit/official_dit_reference.py).

Eager runs come first for every method, compiled runs after them, so the time budget (`--budget`) drops compiled
rows first. Each run is isolated: an error is recorded in its row and the suite goes on. Writes `results.json` and
`results.md` (a Markdown table to paste into BENCHMARKS.md) into `--out`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import logging
import os
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import bench_jit  # the bench_* scripts and common.py sit next to this script (sys.path[0])
import bench_probe
import bench_prune
import bench_rae
import torch
import torch._functorch.config as functorch_config
import transformers
from bench_dino import synthetic_batch
from common import peak_memory_gib
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]

# dense bf16 peak TFLOPS, matched in order against torch.cuda.get_device_name() (PCIe before the SXM default)
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0))
METHODS = ("rae", "jit", "dino", "probe", "prune", "fid", "dit")
COMPILE_ORDER = ("jit", "rae", "dit", "dino", "fid", "probe")  # compiled runs, most wanted first
COMPILE_SECONDS = 90.0  # a compiled run starts only with this much of the budget left


@dataclass
class Suite:
    """What every method reads: device, sizes (dry or full), step counts, the peak for MFU."""

    device: torch.device
    dry: bool
    steps: int
    warmup: int
    compile: bool
    peak_tflops: float | None
    batch: dict[str, int]


@dataclass
class Run:
    """One timed configuration of a method; `measure` returns images/s, s/step and peak memory (GiB)."""

    method: str
    size: str
    variant: str  # "ours" or a baseline's name
    precision: str
    compiled: bool
    batch: int
    measure: Callable[[], dict]
    baseline_of: str | None = None  # for a baseline: the variant it is compared with
    counts_flops: bool = True  # False: the method's FLOPs per image do not describe this run (no MFU)
    note: str = ""


@dataclass
class Row:
    method: str
    size: str
    variant: str
    precision: str
    compiled: bool
    batch: int
    images_per_second: float | None = None
    seconds_per_step: float | None = None
    peak_memory_gib: float | None = None
    gflops_per_image: float | None = None
    mfu: float | None = None
    vs_official: float | None = None
    seconds: float | None = None
    note: str = ""
    error: str | None = None
    extra: dict = field(default_factory=dict)


# ----- shared measurement ---------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def time_steps(step: Callable[[], None], suite: Suite, images: int) -> dict:
    """Warm-up steps, then `suite.steps` timed ones (device synchronized at both ends)."""
    for _ in range(suite.warmup):
        step()
    sync(suite.device)
    start = time.perf_counter()
    for _ in range(suite.steps):
        step()
    sync(suite.device)
    seconds = (time.perf_counter() - start) / suite.steps
    return {
        "images_per_second": images / seconds,
        "seconds_per_step": seconds,
        "peak_memory_gib": peak_memory_gib(suite.device),
    }


def count_flops(fn: Callable[[], None]) -> float:
    """FLOPs of everything `fn` runs (matmuls, convolutions, attention: what `FlopCounterMode` counts)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def adamw(params, device: torch.device) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), fused=device.type == "cuda")


def device_label(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"


def detect_peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def precisions(suite: Suite) -> list[tuple[str, bool]]:
    """(precision, compiled) of "ours": bf16 eager and compiled on GPU; fp32 eager in the dry run."""
    if suite.dry:
        return [("fp32", False)]
    return [("bf16", False)] + ([("bf16", True)] if suite.compile else [])


# ----- methods: each returns its runs and (optionally) FLOPs per image --------------------------------------------
def rae_runs(suite: Suite) -> tuple[list[Run], Callable[[], float] | None]:
    if suite.dry:
        base = ["--encoder", "tiny", "--decoder", "custom-small", "--disc_input_size", "32"]
        size = "tiny DINOv2 64 px, decoder 128x4, GAN"
    else:
        base = ["--encoder", "dinov2-b", "--decoder", "ViT-XL"]
        size = "DINOv2-B / ViT-XL 256 px, L1+LPIPS+GAN"
    base += ["--gan", "--lpips", "--device", suite.device.type]
    batch = suite.batch["rae"]

    def bench(loop: str, precision: str, compiled: bool, batch: int, steps: int, warmup: int) -> dict:
        argv = [*base, "--loop", loop, "--batch_size", str(batch), "--steps", str(steps), "--warmup", str(warmup)]
        argv += (["--bf16"] if precision == "bf16" else []) + (["--compile"] if compiled else [])
        args = bench_rae.parse_args(argv)
        reset_peak(suite.device)
        result = bench_rae.run(args) if loop == "ours" else bench_rae.run_official(args)
        return {k: result[k] for k in ("images_per_second", "seconds_per_step", "peak_memory_gib")}

    runs = [
        Run("rae", size, "ours", p, c, batch, lambda p=p, c=c: bench("ours", p, c, batch, suite.steps, suite.warmup))
        for p, c in precisions(suite)
    ]
    precision = precisions(suite)[0][0]
    runs.append(
        Run(
            "rae", size, "official loop", precision, False, batch,
            lambda: bench("official", precision, False, batch, suite.steps, suite.warmup), baseline_of="ours",
        )
    )  # fmt: skip
    flop_batch = 2
    return runs, lambda: count_flops(lambda: bench("ours", precision, False, flop_batch, 1, 1)) / (2 * flop_batch)


def jit_runs(suite: Suite) -> tuple[list[Run], Callable[[], float] | None]:
    sizes = dict(image_size=None, hidden_size=None, num_hidden_layers=None, num_attention_heads=None)
    sizes["in_context_start"] = None
    preset, size = "JiT-B/16", "JiT-B/16 256 px"
    if suite.dry:
        preset, size = "JiT-B/4", "JiT 32 px, 64x2"
        sizes = dict(image_size=32, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, in_context_start=1)
    batch = suite.batch["jit"]

    def bench(attention: str, precision: str, compiled: bool) -> dict:
        args = argparse.Namespace(
            preset=preset, **sizes, batch_size=batch, sample_batch_size=min(batch, 4), sample_steps=2,
            guidance_scale=3.0, steps=suite.steps, warmup=suite.warmup, device=suite.device.type,
            bf16=precision == "bf16", compile=compiled, peak_tflops=suite.peak_tflops or 989.0,
        )  # fmt: skip
        result = bench_jit.bench(args, attention)
        return {
            "images_per_second": result["train_images_per_second"],
            "seconds_per_step": result["seconds_per_step"],
            "peak_memory_gib": result["peak_memory_gib"],
            "extra": {"sample_images_per_second": result["sample_images_per_second"]},
        }

    runs = [Run("jit", size, "ours", p, c, batch, lambda p=p, c=c: bench("sdpa", p, c)) for p, c in precisions(suite)]
    precision = precisions(suite)[0][0]
    official = "official attention (fp32 softmax)"
    runs.append(Run("jit", size, official, precision, False, batch, lambda: bench("eager", precision, False), "ours"))
    config = bench_jit.JiTConfig.from_preset(preset, num_classes=1000, **{k: v for k, v in sizes.items() if v})
    return runs, lambda: 3 * bench_jit.forward_flops_per_image(config)


def dino_runs(suite: Suite) -> tuple[list[Run], Callable[[], float] | None]:
    from rae_hf.models.dino import DinoConfig, DinoModel
    from rae_hf.trainers.dino_config import DinoTrainingArguments
    from rae_hf.trainers.dino_trainer import DinoTrainer

    if suite.dry:
        shape = dict(backbone="tiny", patch_size=4, global_size=32, local_size=16, head_out_dim=256)
        size = "ViT-T/4 32/16 px, 2+8 crops"
    else:
        shape = dict(backbone="small", patch_size=16, global_size=224, local_size=96, head_out_dim=65536)
        size = "ViT-S/16 224/96 px, 2+8 crops"

    def build(batch: int, precision: str, compiled: bool) -> tuple[Callable[[], None], Callable[[], None]]:
        spec = argparse.Namespace(**shape, batch_size=batch, num_local_crops=8)
        backbone = dict(model_type="dinov2", patch_size=spec.patch_size, image_size=spec.global_size)
        if suite.dry:
            backbone |= dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
        config = DinoConfig(
            backbone_preset=spec.backbone,
            backbone_config=backbone | dict(layerscale_value=1e-5, drop_path_rate=0.3),
            head_out_dim=spec.head_out_dim,
            image_size=spec.global_size,
        )
        model = DinoModel(config).to(suite.device).train()
        output_dir = os.path.join(suite_tmp(), f"dino-{precision}-{compiled}")
        args = DinoTrainingArguments(
            output_dir=output_dir, use_cpu=suite.device.type == "cpu", report_to="none", max_steps=1000,
            log_csv=False, save_on_signal=False,
        )  # fmt: skip
        trainer = DinoTrainer(model=model, args=args)
        optimizer = trainer.create_optimizer()
        scheduler = trainer.create_scheduler(1000, optimizer)
        trainer.teacher_ema.on_train_begin(args, trainer.state, trainer.control)
        data = synthetic_batch(spec, suite.device)
        step_model = torch.compile(model) if compiled else model

        def step() -> None:
            with autocast(suite.device, precision == "bf16"):
                loss = trainer.compute_loss(step_model, data)
            loss.backward()
            for module in model.student.values():
                torch.nn.utils.clip_grad_norm_(module.parameters(), args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            trainer.state.global_step += 1
            trainer.teacher_ema.on_step_end(args, trainer.state, trainer.control)

        return step, trainer._metric_sums.clear  # metrics stay on the device between logs; drop them

    batch = suite.batch["dino"]

    def measure(precision: str, compiled: bool) -> dict:
        reset_peak(suite.device)
        step, clear = build(batch, precision, compiled)
        result = time_steps(step, suite, batch)
        clear()
        return result

    runs = [Run("dino", size, "ours", p, c, batch, lambda p=p, c=c: measure(p, c)) for p, c in precisions(suite)]
    runs[0].note = "no official-approach baseline in this repository"

    def flops() -> float:
        step, _ = build(2, precisions(suite)[0][0], False)
        return count_flops(step) / 2

    return runs, flops


def probe_runs(suite: Suite) -> tuple[list[Run], Callable[[], float] | None]:
    from rae_hf.probe import ComponentSpec, feature_variants, iter_components

    name = "tiny" if suite.dry else "dinov2-b"
    size = "tiny DINOv2 64 px" if suite.dry else "ViT-B/14 224 px (cls, mean, cls+mean)"
    batch = suite.batch["probe"]

    def batches(count: int, image_size: int) -> list[dict]:
        generator = torch.Generator().manual_seed(0)
        pixels = torch.rand(batch, 3, image_size, image_size, generator=generator).to(suite.device)
        labels = torch.zeros(batch, dtype=torch.long, device=suite.device)
        return [{"pixel_values": pixels, "labels": labels, "num_skipped": 0}] * count

    def ours(precision: str, compiled: bool) -> dict:
        encoder = bench_probe.build_encoder(name).to(suite.device)
        if compiled:
            encoder.compile()
        spec = ComponentSpec.for_variants(feature_variants(["cls", "mean", "cls_mean"]))
        data = batches(1, encoder.image_size)
        chosen = "bf16" if precision == "bf16" else "fp32"
        reset_peak(suite.device)
        return time_steps(lambda: list(iter_components(encoder, data, spec, suite.device, chosen)), suite, batch)

    def plain() -> dict:
        encoder = bench_probe.build_encoder(name)
        config = encoder.backbone.config
        config._attn_implementation = "eager"
        backbone = type(encoder.backbone)(config).to(suite.device).eval()
        pixels = batches(1, encoder.image_size)[0]["pixel_values"]
        reset_peak(suite.device)
        with torch.no_grad():
            return time_steps(lambda: backbone(pixel_values=pixels), suite, batch)

    runs = [Run("probe", size, "ours", p, c, batch, lambda p=p, c=c: ours(p, c)) for p, c in precisions(suite)]
    runs.append(Run("probe", size, "plain fp32 eager forward", "fp32", False, batch, plain, "ours"))

    def flops() -> float:
        encoder = bench_probe.build_encoder(name).to(suite.device)
        pixels = torch.rand(2, 3, encoder.image_size, encoder.image_size, device=suite.device)
        with torch.no_grad():
            return count_flops(lambda: encoder.backbone(pixel_values=pixels)) / 2

    return runs, flops


def prune_runs(suite: Suite) -> tuple[list[Run], Callable[[], float] | None]:
    from rae_hf.models.vit import ViTVariantConfig, ViTVariantForImageClassification
    from rae_hf.prune import shrink_model, vit_flops

    preset = "vit_tiny" if suite.dry else "vit_small_imagenet"
    overrides = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
    config = ViTVariantConfig(preset=preset, **(overrides if suite.dry else {}))
    size = f"{'ViT 64x2 32 px' if suite.dry else 'ViT-S/16 224 px'}, 50% structured"
    batch = suite.batch["prune"]
    args = argparse.Namespace(batch_size=batch, steps=suite.steps, warmup=suite.warmup)
    models: dict = {}

    def build() -> dict:
        if not models:
            torch.manual_seed(0)
            dense = ViTVariantForImageClassification(config).to(suite.device)
            masked = ViTVariantForImageClassification(config).to(suite.device)
            masked.load_state_dict(dense.state_dict())
            masks = bench_prune.structured(masked, 0.5)
            masks.apply(masked)
            models.update(dense=dense, masked=masked, masks=masks, shrunk=shrink_model(masked.eval()))
        return models

    def measure(which: str, precision: str, key: str) -> dict:
        built = build()
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        reset_peak(suite.device)
        masks = built["masks"] if which == "masked" else None
        speed = bench_prune.measure(built[which], masks, args, suite.device, dtype)
        sync(suite.device)
        return {
            "images_per_second": speed[key],
            "seconds_per_step": batch / speed[key],
            "peak_memory_gib": peak_memory_gib(suite.device),
            "extra": {"latency_ms_batch_1": speed["latency_ms"]},
        }

    precision = precisions(suite)[0][0]
    runs = [
        Run("prune", size, "ours: round step (masked)", precision, False, batch,
            lambda: measure("masked", precision, "train")),
        Run("prune", size, "ours: shrunk inference", precision, False, batch,
            lambda: measure("shrunk", precision, "infer"), counts_flops=False),
        Run(
            "prune", size, "dense inference", precision, False, batch, lambda: measure("dense", precision, "infer"),
            baseline_of="ours: shrunk inference", counts_flops=False,
        ),
    ]  # fmt: skip
    return runs, lambda: 3 * vit_flops(config)


def fid_runs(suite: Suite) -> tuple[list[Run], Callable[[], float] | None]:
    from rae_hf.metrics import InceptionFeatureExtractor, save_random_inception_weights

    batch = suite.batch["fid"]
    image_size = 64 if suite.dry else 299
    size = f"Inception-v3 at 299 ({image_size} px input), random weights"

    def extractor() -> InceptionFeatureExtractor:
        path = save_random_inception_weights(os.path.join(suite_tmp(), "inception.pth"), seed=0)
        return InceptionFeatureExtractor(path).to(suite.device).eval()

    def measure(compiled: bool) -> dict:
        model = extractor()
        run = torch.compile(model) if compiled else model
        images = torch.rand(batch, 3, image_size, image_size, device=suite.device)
        reset_peak(suite.device)
        with torch.no_grad():
            return time_steps(lambda: run(images), suite, batch)

    runs = [
        Run("fid", size, "ours", "fp32", c, batch, lambda c=c: measure(c), note="target >= 2000 images/s (H100)")
        for _, c in precisions(suite)
    ]

    def flops() -> float:
        model, images = extractor(), torch.rand(2, 3, image_size, image_size, device=suite.device)
        with torch.no_grad():
            return count_flops(lambda: model(images)) / 2

    return runs, flops


def dit_runs(suite: Suite) -> tuple[list[Run], Callable[[], float] | None]:
    from rae_hf.diffusion import FlowMatching
    from rae_hf.models.dit import DiTDHConfig, DiTDHModel

    sys.path.insert(0, str(ROOT / "tests" / "dit"))
    try:
        from official_dit_reference import DiTwDDTHead
    except ImportError:  # an installed copy without the tests
        DiTwDDTHead = None
    if suite.dry:
        config = DiTDHConfig(
            in_channels=8, input_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            head_hidden_size=32, head_num_layers=1, head_num_attention_heads=2, num_classes=10,
        )  # fmt: skip
        size = "DiT-DH 32x2 on 4x4x8"
    else:
        config = DiTDHConfig.from_preset("DiTDH-XL")
        size = "DiT-DH-XL on 16x16x768"
    batch = suite.batch["dit"]
    flow = FlowMatching.rae_stage2()

    def build(official: bool) -> torch.nn.Module:
        torch.manual_seed(0)
        if not official:
            return DiTDHModel(config)
        return DiTwDDTHead(
            config.input_size, config.in_channels, (config.hidden_size, config.head_hidden_size),
            (config.num_hidden_layers, config.head_num_layers),
            (config.num_attention_heads, config.head_num_attention_heads), num_classes=config.num_classes,
        )  # fmt: skip

    def make_step(official: bool, precision: str, compiled: bool, batch: int) -> Callable[[], None]:
        model = build(official).to(suite.device).train()
        run = torch.compile(model) if compiled else model
        optimizer = adamw([p for p in model.parameters() if p.requires_grad], suite.device)
        shape = (batch, config.in_channels, config.input_size, config.input_size)
        x = torch.randn(shape, device=suite.device)
        labels = torch.randint(0, config.num_classes, (batch,), device=suite.device)

        def step() -> None:
            t = flow.sample_time(batch, suite.device)
            noise = flow.sample_noise(x)
            z = flow.add_noise(x, noise, t)
            with autocast(suite.device, precision == "bf16"):
                output = run(z, t, labels)
                prediction = output if official else output.prediction
                loss = flow.loss(prediction.float(), x, noise, z, t).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    def measure(official: bool, precision: str, compiled: bool) -> dict:
        reset_peak(suite.device)
        return time_steps(make_step(official, precision, compiled, batch), suite, batch)

    runs = [Run("dit", size, "ours", p, c, batch, lambda p=p, c=c: measure(False, p, c)) for p, c in precisions(suite)]
    precision = precisions(suite)[0][0]
    if DiTwDDTHead is not None:
        official = Run(
            "dit", size, "official DiTwDDTHead", precision, False, batch, lambda: measure(True, precision, False)
        )
        official.baseline_of = "ours"
        runs.append(official)
    return runs, lambda: count_flops(make_step(False, precision, False, 2)) / 2


BUILDERS = {
    "rae": rae_runs, "jit": jit_runs, "dino": dino_runs, "probe": probe_runs, "prune": prune_runs,
    "fid": fid_runs, "dit": dit_runs,
}  # fmt: skip
FULL_BATCH = {"rae": 32, "jit": 128, "dino": 64, "probe": 256, "prune": 256, "fid": 500, "dit": 64}
DRY_BATCH = {"rae": 2, "jit": 2, "dino": 2, "probe": 4, "prune": 4, "fid": 2, "dit": 2}
_TMP: list[str] = []


def suite_tmp() -> str:
    """A scratch folder of this run (the trainers need an output_dir; nothing is kept)."""
    if not _TMP:
        import tempfile

        _TMP.append(tempfile.mkdtemp(prefix="gpu_suite_"))
    return _TMP[0]


# ----- driver ---------------------------------------------------------------------------------------------------
def run_gpu_tests(timeout: int) -> dict:
    """`pytest -m "gpu and not slow" tests/gpu`: its exit code, summary line and duration."""
    tests = str(ROOT / "tests" / "gpu")
    command = [sys.executable, "-m", "pytest", "-q", "-m", "gpu and not slow", "-p", "no:randomly", tests]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"returncode": None, "summary": f"timed out after {timeout} s", "seconds": timeout}
    lines = [line for line in done.stdout.strip().splitlines() if line.strip()]
    return {
        "returncode": done.returncode,
        "summary": lines[-1] if lines else done.stderr.strip()[-300:],
        "seconds": round(time.perf_counter() - start, 1),
    }


def execute(run: Run, suite: Suite) -> Row:
    row = Row(run.method, run.size, run.variant, run.precision, run.compiled, run.batch, note=run.note)
    start = time.perf_counter()
    functorch_settings = functorch_config.save_config()  # a trainer may change them (RAE: donated buffers)
    try:
        result = run.measure()
        row.extra = result.pop("extra", {})
        for key, value in result.items():
            setattr(row, key, value)
    except Exception as error:  # one failure must not lose the other methods
        row.error = f"{type(error).__name__}: {error}"[:500]
        row.extra["traceback"] = traceback.format_exc(limit=8)
    finally:
        row.seconds = round(time.perf_counter() - start, 1)
        functorch_config.load_config(functorch_settings)
        if run.compiled:
            torch._dynamo.reset()
        gc.collect()
        if suite.device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def finish(rows: list[Row], flops: dict[str, float], suite: Suite) -> None:
    """FLOPs, MFU and the ratio against each method's baseline."""
    for row in rows:
        if row.method in flops and row.extra.pop("counts_flops", True):
            row.gflops_per_image = flops[row.method] / 1e9
            if suite.peak_tflops and row.images_per_second and row.precision == "bf16":
                row.mfu = flops[row.method] * row.images_per_second / (suite.peak_tflops * 1e12)
    for baseline in [r for r in rows if r.extra.get("baseline_of") and r.images_per_second]:
        for row in rows:
            if row.method == baseline.method and row.variant == baseline.extra["baseline_of"] and row.images_per_second:
                row.vs_official = row.images_per_second / baseline.images_per_second


def fmt(value, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def markdown(report: dict) -> str:
    header = (
        f"Device: {report['device']} ({report['mode']}), torch {report['torch']}, transformers "
        f"{report['transformers']}, {report['date']}. Peak for MFU: {fmt(report['peak_bf16_tflops'], 'g')} "
        f'TFLOPS (dense bf16). `pytest -m "gpu and not slow"`: {report["gpu_tests"]["summary"]} '
        f"({report['gpu_tests']['seconds']} s). Suite: {report['seconds']:.0f} s.\n\n"
        "| method | size | variant | precision | compile | batch | images/s | s/step | peak memory | GFLOPs/image "
        "| MFU | vs baseline | note |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for row in report["rows"]:
        note = f"error: {row['error'][:160]}" if row["error"] else row["note"]
        lines.append(
            f"| {row['method']} | {row['size']} | {row['variant']} | {row['precision']} | "
            f"{'yes' if row['compiled'] else 'no'} | {row['batch']} | {fmt(row['images_per_second'], '.1f')} | "
            f"{fmt(row['seconds_per_step'], '.4f')} | {fmt(row['peak_memory_gib'], '.2f', ' GiB')} | "
            f"{fmt(row['gflops_per_image'], '.1f')} | "
            f"{fmt(row['mfu'] and 100 * row['mfu'], '.1f', '%')} | {fmt(row['vs_official'], '.2f', 'x')} | "
            f"{note.replace('|', '/')} |"
        )
    return header + "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="Folder for results.json and results.md.")
    parser.add_argument("--dry-run", action="store_true", help="Tiny sizes on CPU, fp32, 2 timed steps (CI).")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--steps", type=int, default=None, help="Timed steps per run (30; dry run 2).")
    parser.add_argument("--warmup", type=int, default=None, help="Untimed steps first (5; dry run 1).")
    parser.add_argument("--budget", type=float, default=None, help="Seconds after which runs are skipped (420).")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="Skip the compiled runs.")
    parser.add_argument("--skip-tests", action="store_true", help="Do not run `pytest -m gpu` first.")
    args = parser.parse_args(argv)
    dry = args.dry_run
    args.steps = args.steps or (2 if dry else 30)
    args.warmup = args.warmup if args.warmup is not None else (1 if dry else 5)
    args.budget = args.budget or (600.0 if dry else 420.0)  # the dry run must reach every method (CI)
    if not dry and not torch.cuda.is_available():
        parser.error("No CUDA device: the suite measures GPUs (use --dry-run to exercise it on the CPU).")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    start = time.perf_counter()
    transformers.logging.set_verbosity_error()
    logging.getLogger("rae_hf").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    os.makedirs(args.out, exist_ok=True)
    device = torch.device("cpu" if args.dry_run else "cuda")
    suite = Suite(
        device=device,
        dry=args.dry_run,
        steps=args.steps,
        warmup=args.warmup,
        compile=args.compile and not args.dry_run,
        peak_tflops=detect_peak_tflops(device),
        batch=DRY_BATCH if args.dry_run else FULL_BATCH,
    )
    if device.type == "cuda":  # what the trainers turn on for CUDA runs (see BaseTrainingArguments)
        torch.set_float32_matmul_precision("high")  # cuDNN allows TF32 by default
    gpu_tests = {"returncode": None, "summary": "skipped (--skip-tests)", "seconds": 0}
    if not args.skip_tests:
        gpu_tests = run_gpu_tests(timeout=120)
        print(f'pytest -m "gpu and not slow": {gpu_tests["summary"]} ({gpu_tests["seconds"]} s)', flush=True)

    plans, flop_counters = [], {}
    for method in args.methods:
        try:
            runs, flops = BUILDERS[method](suite)
        except Exception as error:
            runs, flops = [], None
            plans.append(Run(method, "-", "setup", "-", False, 0, lambda e=error: (_ for _ in ()).throw(e)))
        plans += runs
        if flops is not None:
            flop_counters[method] = flops
    compiled = sorted((r for r in plans if r.compiled), key=lambda r: COMPILE_ORDER.index(r.method))
    ordered = [r for r in plans if not r.compiled] + compiled  # compiled runs last: the budget drops them first
    rows: list[Row] = []
    flops: dict[str, float] = {}
    for run in ordered:
        elapsed = time.perf_counter() - start
        if elapsed > args.budget or (run.compiled and args.budget - elapsed < COMPILE_SECONDS):
            row = Row(run.method, run.size, run.variant, run.precision, run.compiled, run.batch)
            row.error = f"skipped: time budget ({elapsed:.0f} s > {args.budget:.0f} s)"
        else:
            row = execute(run, suite)
        if run.baseline_of:
            row.extra["baseline_of"] = run.baseline_of
        row.extra["counts_flops"] = run.counts_flops
        rows.append(row)
        print(
            f"{run.method:6s} {run.variant[:34]:34s} {run.precision:5s} compile={run.compiled!s:5s} "
            f"{fmt(row.images_per_second, '10.1f')} img/s  ({row.seconds} s){'  ' + row.error if row.error else ''}",
            flush=True,
        )
        if run.method in flop_counters and run.method not in flops and not row.error and not run.compiled:
            try:
                flops[run.method] = flop_counters[run.method]()
            except Exception as error:
                row.extra["flops_error"] = f"{type(error).__name__}: {error}"[:300]
    finish(rows, flops, suite)
    report = {
        "mode": "dry run (CPU, tiny sizes)" if args.dry_run else "full",
        "device": device_label(device),
        "peak_bf16_tflops": suite.peak_tflops,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "steps": suite.steps,
        "warmup": suite.warmup,
        "gpu_tests": gpu_tests,
        "rows": [asdict(row) for row in rows],
        "seconds": time.perf_counter() - start,
    }
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(report, f, indent=2)
    table = markdown(report)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(table)
    print(table, flush=True)
    failed = [row for row in rows if row.error and not row.error.startswith("skipped")]
    print(f"{len(rows)} runs, {len(failed)} failed, {report['seconds']:.0f} s -> {args.out}", flush=True)
    if args.dry_run and failed:  # CI: the suite must keep running end to end
        raise SystemExit(1)
    return report


if __name__ == "__main__":
    main()
