"""Command-line arguments of tiny `run_jit.py` runs (seconds on CPU) shared by the script tests and the DDP worker."""

from __future__ import annotations


def tiny_run_args(output_dir: str, data_dir: str, *extra: str) -> list[str]:
    """A class-conditional JiT of width 32 on 16x16 images of `data_dir/{train,validation}` (imagefolder)."""
    return [
        "--train_dir", f"{data_dir}/train", "--validation_dir", f"{data_dir}/validation", "--image_size", "16",
        "--model_preset", "JiT-B/4", "--hidden_size", "32", "--num_hidden_layers", "2", "--num_attention_heads", "2",
        "--bottleneck_dim", "8", "--in_context_start", "1", "--output_dir", output_dir,
        "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4", "--learning_rate", "1e-3",
        "--warmup_epochs", "0", "--ema_decay", "0.9", "--ema_decay2", "0.5", "--sample_steps", "3",
        "--num_grid_samples", "4", "--sample_every", "0", "--logging_steps", "1", "--save_strategy", "no",
        "--report_to", "none", "--use_cpu", "true", "--dataloader_num_workers", "0", "--disable_tqdm", "true",
        "--seed", "0", *extra,
    ]  # fmt: skip
