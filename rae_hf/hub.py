"""Model cards for models published with `save_pretrained` / `push_to_hub`."""

from __future__ import annotations

import os

from .models.rae import RAEModel

TRAINING_KEYS = (
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "lr_scheduler_type",
    "perceptual_weight",
    "disc_weight",
    "disc_start",
    "disc_upd_start",
    "ema_decay",
    "bf16",
)


def rae_model_card(model: RAEModel, dataset: str, training_args=None, metrics: dict | None = None) -> str:
    """Markdown model card of an RAE: encoder, decoder, data, training recipe, measured metrics, usage."""
    config = model.config
    encoder = getattr(config, "encoder_name_or_path", None) or config.encoder_config.model_type
    lines = [
        "---",
        "library_name: transformers",
        "tags: [rae, representation-autoencoder, image-reconstruction, rae_hf]",
        "---",
        f"# RAE decoder for `{encoder}`",
        "",
        "A Representation Autoencoder (Zheng et al., 2025): a frozen pretrained encoder and a ViT decoder trained",
        "with L1 + LPIPS + an adversarial DINO discriminator, trained with `rae_hf`.",
        "",
        "| part | value |",
        "| --- | --- |",
        f"| encoder | `{encoder}` ({config.encoder_config.model_type}, frozen, input {config.encoder_input_size} px) |",
        f"| latent | {config.latent_channels} x {config.latent_grid_size} x {config.latent_grid_size} |",
        f"| decoder | ViT {config.decoder_preset or 'custom'}: hidden {config.decoder_hidden_size}, "
        f"{config.decoder_num_hidden_layers} layers, {config.decoder_num_attention_heads} heads, "
        f"patch {config.decoder_patch_size} |",
        f"| output | {config.image_size} x {config.image_size} |",
        f"| training noise | tau {config.noise_tau} ({config.noise_distribution}) |",
        f"| latent normalization | {'on' if config.normalize_latents else 'off'} |",
        f"| data | `{dataset}` |",
    ]
    if training_args is not None:
        lines += ["", "## Training recipe", "", "| argument | value |", "| --- | --- |"]
        lines += [f"| {k} | {getattr(training_args, k)} |" for k in TRAINING_KEYS if hasattr(training_args, k)]
    if metrics:
        lines += ["", "## Metrics", "", "| metric | value |", "| --- | --- |"]
        lines += [
            f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in sorted(metrics.items())
        ]
    lines += [
        "",
        "## Usage",
        "",
        "```python",
        "from transformers import AutoModel",
        "model = AutoModel.from_pretrained('<this repo>', trust_remote_code=True).eval()",
        "latents = model.encode(images).latents          # images: [B, 3, H, W] in [0, 1]",
        "reconstruction = model.decode(latents).reconstruction  # [B, 3, 256, 256] in [0, 1]",
        "```",
        "",
    ]
    return "\n".join(lines)


def write_model_card(output_dir: str, card: str) -> str:
    path = os.path.join(output_dir, "README.md")
    with open(path, "w") as f:
        f.write(card)
    return path
