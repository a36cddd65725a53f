"""Arguments of a tiny `run_rae_dit.py` run shared by the script tests and the 2-process worker."""

from __future__ import annotations


def tiny_run_args(output_dir: str, data_dir: str, rae_dir: str, *extra: str) -> list[str]:
    """A tiny DiT-DH (width 32, head 32) on the 32 x 4 x 4 latents of a tiny RAE, from a latent cache."""
    return [
        "--rae_name_or_path", rae_dir, "--train_dir", f"{data_dir}/train", "--validation_dir",
        f"{data_dir}/validation", "--image_size", "32", "--latent_cache", f"{output_dir}-latents",
        "--hidden_size", "32", "--num_hidden_layers", "2", "--num_attention_heads", "2", "--head_hidden_size", "32",
        "--head_num_layers", "1", "--head_num_attention_heads", "2", "--output_dir", output_dir,
        "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4", "--learning_rate", "1e-3",
        "--ema_decay", "0.9", "--sample_steps", "2", "--num_grid_samples", "4", "--sample_every", "0",
        "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none", "--use_cpu", "true",
        "--dataloader_num_workers", "0", "--disable_tqdm", "true", "--seed", "0", *extra,
    ]  # fmt: skip
