"""JiT throughput: training images/s (forward, v-loss, backward, fused AdamW) and sampling images/s (Heun, CFG) plus
peak memory, for our model (SDPA attention) and the official-style attention (fp32 softmax by hand, autocast off),
side by side. Random weights; nothing is downloaded. On CUDA it also prints the MFU of training.

    python benchmarks/bench_jit.py --preset JiT-B/16 --batch_size 128 --bf16 --compile --device cuda --header
    python benchmarks/bench_jit.py --preset JiT-B/4 --image_size 32 --hidden_size 192 --num_hidden_layers 4 \
        --num_attention_heads 3 --in_context_start 1 --batch_size 8 --steps 3 --sample_steps 4     # CPU smoke

`--official` times our training step against the official network's (`tests/jit/official_reference.py`, the same
weights and inputs, fp32 attention by hand, RoPE angles built once as the official buffers) in one process:
alternating single steps, each side with its own persistent AdamW, and prints the paired median ratio ours/official.
`--torch_compile` compiles our blocks (`JiTModel.compile_blocks`); the official side stays eager.

    OMP_NUM_THREADS=1 python benchmarks/bench_jit.py --official --preset JiT-B/4 --image_size 64 --hidden_size 192 \
        --num_hidden_layers 4 --num_attention_heads 3 --in_context_start 1 --batch_size 4 --steps 7 --device cpu
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import sys
import time
from pathlib import Path

import torch
from common import emit, peak_memory_gib

from rae_hf.diffusion import FlowMatching
from rae_hf.models.jit import JiTConfig, JiTModel
from rae_hf.pipelines import JiTPipeline

HEADER = (
    "| device | model | image | batch | attention | precision | compile | train img/s | train s/step | MFU | "
    "sample img/s (steps) | peak memory |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
)


def forward_flops_per_image(config: JiTConfig) -> float:
    """Matmul FLOPs of one forward (2 x MACs): linear layers over all tokens + attention scores and mixing."""
    d, h, depth = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    tokens = config.grid_size**2
    context = tokens + config.num_in_context_tokens
    block_tokens = config.in_context_start * tokens + (depth - config.in_context_start) * context
    linear = 2 * block_tokens * (3 * d * d + d * d + 2 * d * h + h * d)
    attention = 4 * d * (config.in_context_start * tokens**2 + (depth - config.in_context_start) * context**2)
    patch = 2 * tokens * (config.patch_size**2 * 3 * config.bottleneck_dim + config.bottleneck_dim * d)
    final = 2 * tokens * d * config.patch_size**2 * 3
    return float(linear + attention + patch + final)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(args: argparse.Namespace, device: torch.device) -> JiTModel:
    sizes = ("image_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "in_context_start")
    overrides = {k: getattr(args, k) for k in sizes}
    config = JiTConfig.from_preset(args.preset, num_classes=1000, **overrides)
    torch.manual_seed(0)
    return JiTModel(config).to(device)


def bench_official(args: argparse.Namespace) -> None:
    """Paired median of (our step time / the official network's step time) over `args.steps` alternating steps."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "jit"))
    import official_reference as official

    official._rope_angles = functools.cache(official._rope_angles)  # the official model keeps them as buffers
    device = torch.device(args.device)
    model = build(args, device)
    if args.compile:
        model.compile_blocks()
    config = model.config
    weights = {name: tensor.detach().clone().requires_grad_(name != "pos_embed") for name, tensor in
               model.state_dict().items()}  # fmt: skip
    trainable = [tensor for tensor in weights.values() if tensor.requires_grad]
    optimizers = [torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95)),
                  torch.optim.AdamW(trainable, lr=1e-4, betas=(0.9, 0.95))]  # fmt: skip
    flow = FlowMatching(noise_scale=config.noise_scale)

    def network(side: int, z: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if side == 0:
            return model(z, t, labels).prediction
        heads, start, patch = config.num_attention_heads, config.in_context_start, config.patch_size
        return official.reference_forward(weights, z, t, labels, heads, start, patch)

    def step(side: int, seed: int) -> tuple[float, torch.Tensor]:
        generator = torch.Generator(device).manual_seed(seed)
        x = torch.rand(args.batch_size, 3, config.image_size, config.image_size, device=device, generator=generator)
        x = x * 2 - 1
        labels = torch.randint(0, 1000, (args.batch_size,), device=device, generator=generator)
        t, noise = flow.sample_time(args.batch_size, device, generator), flow.sample_noise(x, generator)
        sync(device)
        start = time.perf_counter()
        z = flow.add_noise(x, noise, t)
        prediction = network(side, z, t, labels)
        flow.loss(prediction, x, noise, z, t).mean().backward()
        optimizers[side].step()
        optimizers[side].zero_grad(set_to_none=True)
        sync(device)
        return time.perf_counter() - start, prediction.detach()

    step(0, 0), step(1, 0)  # warm-up (and compilation); both sides see the same inputs from the same weights
    times: list[tuple[float, float]] = []
    for index in range(1, args.steps + 1):
        order = (0, 1) if index % 2 else (1, 0)  # alternate which side runs first
        measured = {side: step(side, index) for side in order}
        times.append((measured[0][0], measured[1][0]))
    difference = (measured[0][1] - measured[1][1]).abs().max().item()
    scale = measured[1][1].abs().max().item()
    print(f"after {args.steps + 1} steps on the same data: max |ours - official| prediction = {difference:.2e} "
          f"(max |prediction| {scale:.2e})")  # fmt: skip
    ratio = statistics.median(ours / theirs for ours, theirs in times)
    ours_s, theirs_s = (statistics.median(pair[i] for pair in times) for i in (0, 1))
    extra = unpatchify_loop_cost(args.batch_size, config.image_size, config.patch_size, device)
    adjusted = statistics.median(ours / (theirs - extra) for ours, theirs in times)
    label = args.label or (torch.cuda.get_device_name() if device.type == "cuda" else
                           f"CPU, {torch.get_num_threads()} thread(s)")  # fmt: skip
    print(f"{label}: {args.preset} d={config.hidden_size}x{config.num_hidden_layers} {config.image_size}px batch "
          f"{args.batch_size} fp32, compile={'blocks' if args.compile else 'no'}: ours {ours_s:.3f} s/step, official "
          f"{theirs_s:.3f} s/step, paired median ours/official = {ratio:.3f} over {len(times)} steps")  # fmt: skip
    print(f"the reference's per-token unpatchify loop costs {1e3 * extra:.1f} ms/step more than the official einsum; "
          f"without it: ours/official = {adjusted:.3f}")  # fmt: skip


def unpatchify_loop_cost(batch: int, image_size: int, patch: int, device: torch.device, repeats: int = 7) -> float:
    """Median extra seconds (forward + backward) of the reference's token-by-token unpatchify over an einsum."""
    grid = image_size // patch
    tokens = torch.randn(batch, grid * grid, patch * patch * 3, device=device, requires_grad=True)

    def by_loop() -> torch.Tensor:
        out = tokens.new_zeros(batch, 3, image_size, image_size)
        for n in range(grid * grid):
            row, col = divmod(n, grid)
            block = tokens[:, n].view(-1, patch, patch, 3).permute(0, 3, 1, 2)
            out[:, :, row * patch : (row + 1) * patch, col * patch : (col + 1) * patch] = block
        return out

    def by_einsum() -> torch.Tensor:
        patches = tokens.reshape(batch, grid, grid, patch, patch, 3)
        return torch.einsum("nhwpqc->nchpwq", patches).reshape(batch, 3, image_size, image_size)

    def seconds(function) -> float:
        sync(device)
        start = time.perf_counter()
        function().sum().backward()
        sync(device)
        return time.perf_counter() - start

    return statistics.median(seconds(by_loop) - seconds(by_einsum) for _ in range(repeats))


def bench(args: argparse.Namespace, attention: str) -> dict:
    device = torch.device(args.device)
    model = build(args, device)
    config = model.config
    model.config._attn_implementation = attention  # read by JiTAttention at each forward
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step_model = torch.compile(model) if args.compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=True)
    flow = FlowMatching(noise_scale=config.noise_scale)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()
    x = torch.rand(args.batch_size, 3, config.image_size, config.image_size, device=device) * 2 - 1
    labels = torch.randint(0, 1000, (args.batch_size,), device=device)

    def train_step() -> None:
        t = flow.sample_time(args.batch_size, device)
        noise = flow.sample_noise(x)
        z = flow.add_noise(x, noise, t)
        with autocast:
            loss = flow.loss(step_model(z, t, labels).prediction, x, noise, z, t).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        train_step()
    sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        train_step()
    sync(device)
    step_time = (time.perf_counter() - start) / args.steps
    train_ips = args.batch_size / step_time
    mfu = None
    if device.type == "cuda":
        mfu = 3 * forward_flops_per_image(config) * train_ips / (args.peak_tflops * 1e12)

    model.eval()
    pipe = JiTPipeline(model)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator(device).manual_seed(0)
    sample_labels = labels[: args.sample_batch_size]
    with torch.no_grad(), autocast:
        pipe(sample_labels, num_inference_steps=2, guidance_scale=args.guidance_scale, generator=generator)
        sync(device)
        start = time.perf_counter()
        pipe(sample_labels, num_inference_steps=args.sample_steps, guidance_scale=args.guidance_scale,
             generator=generator, output_type="latent")  # fmt: skip
        sync(device)
    sample_ips = len(sample_labels) / (time.perf_counter() - start)
    return {
        "attention": attention,
        "train_images_per_second": train_ips,
        "seconds_per_step": step_time,
        "mfu": mfu,
        "sample_images_per_second": sample_ips,
        "peak_memory_gib": peak_memory_gib(device),
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "config": config,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="JiT-B/16")
    parser.add_argument("--image_size", type=int, default=None)
    parser.add_argument("--hidden_size", type=int, default=None)
    parser.add_argument("--num_hidden_layers", type=int, default=None)
    parser.add_argument("--num_attention_heads", type=int, default=None)
    parser.add_argument("--in_context_start", type=int, default=None)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--sample_batch_size", type=int, default=None, help="Default: --batch_size.")
    parser.add_argument("--sample_steps", type=int, default=50, help="Heun steps (paper 50).")
    parser.add_argument("--guidance_scale", type=float, default=3.0, help="CFG (both branches on (0.1, 1)).")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--compile", "--torch_compile", action="store_true",
                        help="torch.compile (the whole model; with --official: each block).")  # fmt: skip
    parser.add_argument("--official", action="store_true", help="Paired ratio of our step to the official one.")
    parser.add_argument("--attention", choices=("sdpa", "eager", "both"), default="both")
    parser.add_argument("--peak_tflops", type=float, default=989.0, help="Dense bf16 peak (H100/H200 SXM: 989).")
    parser.add_argument("--label", default=None, help="Device description in the row.")
    parser.add_argument("--header", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    args.sample_batch_size = args.sample_batch_size or args.batch_size
    if args.official:
        return bench_official(args)
    header = HEADER if args.header else None
    for attention in ("sdpa", "eager") if args.attention == "both" else (args.attention,):
        result = bench(args, attention)
        config = result.pop("config")
        device = args.label or (
            torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
        )
        model = f"{args.preset} ({result['parameters_m']:.1f}M, d={config.hidden_size}x{config.num_hidden_layers})"
        attn = "SDPA" if attention == "sdpa" else "official (fp32 softmax)"
        mfu = f"{100 * result['mfu']:.1f}%" if result["mfu"] is not None else "-"
        row = (
            f"| {device} | {model} | {config.image_size} | {args.batch_size} | {attn} | "
            f"{'bf16' if args.bf16 else 'fp32'} | {'yes' if args.compile else 'no'} | "
            f"{result['train_images_per_second']:.2f} | {result['seconds_per_step']:.3f} | {mfu} | "
            f"{result['sample_images_per_second']:.3f} ({args.sample_steps}) | {result['peak_memory_gib']:.2f} GiB |"
        )
        emit(row, header, result, vars(args), args.json and args.json.replace(".json", f"_{attention}.json"))
        header = None


if __name__ == "__main__":
    main()
