#!/usr/bin/env python
"""Throughput and memory of FID Inception feature extraction, of the full rFID loop (`RFIDEvaluator`) and of the
generation evaluation loop (`evaluate_generation`: FID + Inception Score, sampler cost excluded).

The RAE is built from its config with random weights (nothing is downloaded): DINOv2-B with registers (256 px
images, encoder at 224, decoder patch 16) or a tiny DINOv2 (64 px) for smoke runs, with a ViT decoder preset.
The Inception network loads `--inception_weights` (the FID weights, `pt_inception-2015-12-05-6726825d.pth`) or,
with `--random_inception`, random weights of the same architecture (same cost; the scores are meaningless).

    python benchmarks/bench_fid.py --encoder dinov2-b --decoder ViT-XL --batch_size 64 --num_images 2048 --bf16 \
        --inception_weights pt_inception-2015-12-05-6726825d.pth --header
    python benchmarks/bench_fid.py --encoder tiny --decoder ViT-B --batch_size 4 --num_images 16 --device cpu \
        --random_inception --header

Prints one Markdown table row (`--header` adds the header):
    | device | encoder | decoder | image | batch | precision | Inception images/s | rFID images/s |
      FID+IS eval images/s | FD s | peak memory |
"Inception images/s": features of [0, 1] images already on the device. "rFID images/s": `RFIDEvaluator.evaluate`
end to end (host batches -> device, reconstruction, Inception on originals and reconstructions, PSNR, SSIM, the
final Fréchet distance), `--num_images` over its wall time. "FID+IS eval images/s": `evaluate_generation` over the
same images handed over by a sampler that does no work (one Inception pass per batch for both FID features and IS
logits, the final FD and IS). "FD s": one Fréchet distance of 2048-d statistics
(included once in the rFID time). Peak memory is `torch.cuda.max_memory_allocated` on CUDA and the process's peak
resident set size on CPU.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every model here is built from a config

import torch
import transformers
from common import emit, peak_memory_gib
from transformers import Dinov2WithRegistersConfig

from rae_hf.evaluation import RFIDEvaluator, evaluate_generation
from rae_hf.metrics import (
    INCEPTION_FEATURE_DIM,
    InceptionFeatureExtractor,
    frechet_distance,
    save_random_inception_weights,
)
from rae_hf.models.rae import DECODER_PRESETS, RAEConfig, RAEModel

# name -> (encoder config factory, encoder input size, decoder patch, image size fed to the RAE)
ENCODERS = {
    # facebook/dinov2-with-registers-base: patch 14, 4 registers; 256 px images -> 224 encoder input -> 256 output
    "dinov2-b": (lambda: Dinov2WithRegistersConfig(patch_size=14, image_size=518, num_register_tokens=4), 224, 16, 256),
    # tiny DINOv2 with registers (as `rae_hf.tools.make_tiny_models`): 64 px, patch 8 -> 8x8 tokens -> 64 px output
    "tiny": (
        lambda: Dinov2WithRegistersConfig(
            image_size=64, patch_size=8, hidden_size=64, num_hidden_layers=4, num_attention_heads=2,
            num_register_tokens=4,
        ),
        64,
        8,
        64,
    ),
}  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", choices=sorted(ENCODERS), default="dinov2-b")
    parser.add_argument("--decoder", choices=sorted(DECODER_PRESETS), default="ViT-XL")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--num_images", type=int, default=512, help="Timed images (after --warmup batches).")
    parser.add_argument("--warmup", type=int, default=1, help="Untimed batches through each stage first.")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for the RAE (Inception stays float32).")
    parser.add_argument("--inception_weights", default=None, help="Local FID Inception weights (.pth).")
    parser.add_argument("--random_inception", action="store_true", help="Random Inception weights (no download).")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json_out", default=None, help="Also write the result (and settings) as JSON here.")
    parser.add_argument("--header", action="store_true", help="Print the Markdown table header first.")
    args = parser.parse_args(argv)
    for name in ("batch_size", "num_images"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1.")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0.")
    if args.random_inception and args.inception_weights:
        parser.error("--random_inception and --inception_weights exclude each other.")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available.")
    return args


def build_model(args: argparse.Namespace) -> RAEModel:
    make_config, input_size, patch, _ = ENCODERS[args.encoder]
    config = RAEConfig(
        encoder_config=make_config(),
        encoder_input_size=input_size,
        decoder_patch_size=patch,
        decoder_preset=args.decoder,
        noise_tau=0.0,
    )
    return RAEModel(config).eval()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


@torch.no_grad()
def time_features(extractor: InceptionFeatureExtractor, batches: list[torch.Tensor], device: torch.device) -> float:
    """Seconds to extract the features of `batches` (already on the device)."""
    synchronize(device)
    start = time.perf_counter()
    for batch in batches:
        extractor(batch)
    synchronize(device)
    return time.perf_counter() - start


def time_frechet_distance(device: torch.device, seed: int) -> float:
    """Seconds for one Fréchet distance between two full-rank 2048-d Gaussians."""
    generator = torch.Generator().manual_seed(seed)
    samples = torch.randn(2, INCEPTION_FEATURE_DIM + 256, INCEPTION_FEATURE_DIM, generator=generator)
    stats = [(x.mean(0).double().to(device), torch.cov(x.T).double().to(device)) for x in samples]
    synchronize(device)
    start = time.perf_counter()
    frechet_distance(*stats[0], *stats[1])
    synchronize(device)
    return time.perf_counter() - start


def time_generation_evaluation(
    extractor: InceptionFeatureExtractor, batches: list[torch.Tensor], device: torch.device
) -> float:
    """Seconds for `evaluate_generation` (FID against fixed statistics + Inception Score, one Inception pass per batch)
    of `batches` from a "sampler" that only hands them over: the evaluation's own cost."""
    queue = list(batches)
    reference = (torch.zeros(INCEPTION_FEATURE_DIM, dtype=torch.float64), torch.eye(INCEPTION_FEATURE_DIM))

    def hand_over(count: int, labels: torch.Tensor | None) -> torch.Tensor:
        return queue.pop(0).to(device)

    total = sum(batch.shape[0] for batch in batches)
    synchronize(device)
    start = time.perf_counter()
    evaluate_generation(
        hand_over, total, batches[0].shape[0], reference=reference, feature=extractor,
        inception_score_splits=min(10, total),
    )  # fmt: skip
    synchronize(device)
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> dict:
    transformers.set_seed(args.seed)
    device = torch.device(args.device)
    size = ENCODERS[args.encoder][3]
    model = build_model(args).to(device)
    with tempfile.TemporaryDirectory(prefix="bench_fid_") as tmp:
        weights = args.inception_weights
        if args.random_inception:
            weights = save_random_inception_weights(os.path.join(tmp, "random_inception.pth"), seed=args.seed)
        extractor = InceptionFeatureExtractor(weights).to(device)

    generator = torch.Generator().manual_seed(args.seed)
    host_batches = [
        torch.rand(min(args.batch_size, args.num_images - start), 3, size, size, generator=generator)
        for start in range(0, args.num_images, args.batch_size)
    ]
    warmup = [torch.rand(args.batch_size, 3, size, size, generator=generator) for _ in range(args.warmup)]

    device_batches = [batch.to(device) for batch in host_batches]
    time_features(extractor, [batch.to(device) for batch in warmup], device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    feature_seconds = time_features(extractor, device_batches, device)
    del device_batches

    evaluator = RFIDEvaluator(feature=extractor, device=device, autocast_dtype=torch.bfloat16 if args.bf16 else None)

    def reconstruct(images: torch.Tensor) -> torch.Tensor:
        return model(images).reconstruction

    if warmup:
        evaluator.evaluate(reconstruct, [{"pixel_values": batch} for batch in warmup + warmup])
    synchronize(device)
    start = time.perf_counter()
    result = evaluator.evaluate(reconstruct, [{"pixel_values": batch} for batch in host_batches])
    synchronize(device)
    rfid_seconds = time.perf_counter() - start
    if result["num_samples"] != args.num_images:
        raise RuntimeError(f"Evaluated {result['num_samples']} images, expected {args.num_images}.")

    generation_seconds = time_generation_evaluation(extractor, host_batches, device)

    return {
        "device": device_name(device),
        "encoder": args.encoder,
        "decoder": args.decoder,
        "image_size": size,
        "reconstruction_size": model.config.image_size,
        "batch": args.batch_size,
        "precision": "bf16" if args.bf16 else "fp32",
        "inception_images_per_second": args.num_images / feature_seconds,
        "rfid_images_per_second": args.num_images / rfid_seconds,
        "generation_eval_images_per_second": args.num_images / generation_seconds,
        "frechet_distance_seconds": time_frechet_distance(device, args.seed),
        "peak_memory_gib": peak_memory_gib(device),
        "peak_memory_kind": "cuda max_memory_allocated" if device.type == "cuda" else "process peak RSS",
        "num_images": args.num_images,
        "inception_weights": "random" if args.random_inception else "FID",
        "torch": torch.__version__,
    }


HEADER = (
    "| device | encoder | decoder | image | batch | precision | Inception images/s | rFID images/s | "
    "FID+IS eval images/s | FD s | peak memory |\n|---|---|---|---|---|---|---|---|---|---|---|"
)


def markdown_row(result: dict) -> str:
    image = f"{result['image_size']} -> {result['reconstruction_size']}"
    return (
        f"| {result['device']} | {result['encoder']} | {result['decoder']} | {image} | {result['batch']} | "
        f"{result['precision']} | {result['inception_images_per_second']:.2f} | "
        f"{result['rfid_images_per_second']:.2f} | {result['generation_eval_images_per_second']:.2f} | "
        f"{result['frechet_distance_seconds']:.2f} | "
        f"{result['peak_memory_gib']:.2f} GiB |"
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    transformers.logging.set_verbosity_error()
    result = run(args)
    emit(markdown_row(result), HEADER if args.header else None, result, vars(args), args.json_out)


if __name__ == "__main__":
    main()
