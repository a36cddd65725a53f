"""Model cards for models published with `save_pretrained` / `push_to_hub`.

Shared pieces every trainer's `model_card_text` can use: `front_matter`, `markdown_table`, `recipe_rows` (training
arguments as they were typed: `cosine_with_min_lr`, not `SchedulerType.COSINE_WITH_MIN_LR`), `informative_metrics`
(drops `total_flos` and other bookkeeping), `write_model_card`. `rae_model_card` is the RAE's card.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from enum import Enum
from typing import Any

from .models.rae import DECODER_PRESETS, RAEModel

__all__ = [
    "NON_INFORMATIVE_METRICS",
    "RAE_TRAINING_KEYS",
    "format_value",
    "front_matter",
    "informative_metrics",
    "markdown_table",
    "rae_model_card",
    "recipe_rows",
    "write_model_card",
]

RAE_TRAINING_KEYS = (
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
# Log entries that say nothing about the model (Trainer bookkeeping; rae_hf does not count FLOPs, so always 0).
NON_INFORMATIVE_METRICS = ("total_flos", "epoch", "step")


def format_value(value: Any) -> str:
    """A value as a user would type it: enums by their value, floats to 4 significant digits."""
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def front_matter(tags: Sequence[str], library_name: str = "transformers") -> list[str]:
    """The YAML header of a hub model card."""
    return ["---", f"library_name: {library_name}", f"tags: [{', '.join(tags)}]", "---"]


def markdown_table(rows: Iterable[tuple[str, Any]], header: tuple[str, str] = ("argument", "value")) -> list[str]:
    """A two-column Markdown table (values through `format_value`); empty when there are no rows."""
    rows = list(rows)
    if not rows:
        return []
    return [f"| {header[0]} | {header[1]} |", "| --- | --- |"] + [f"| {k} | {format_value(v)} |" for k, v in rows]


def recipe_rows(training_args: Any, keys: Sequence[str]) -> list[tuple[str, Any]]:
    """`(name, value)` of the training arguments in `keys` that `training_args` has."""
    return [(key, getattr(training_args, key)) for key in keys if hasattr(training_args, key)]


def informative_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Metrics worth publishing: without Trainer bookkeeping (`total_flos`, `epoch`, `step`) and empty values."""
    result = {}
    for key, value in metrics.items():
        if key in NON_INFORMATIVE_METRICS or key.endswith("_total_flos") or value is None:
            continue
        if isinstance(value, float) and math.isnan(value):
            continue
        result[key] = value
    return dict(sorted(result.items()))


def _decoder_description(config) -> str:
    sizes = {
        "hidden_size": config.decoder_hidden_size,
        "num_hidden_layers": config.decoder_num_hidden_layers,
        "num_attention_heads": config.decoder_num_attention_heads,
        "intermediate_size": config.decoder_intermediate_size,
    }
    preset = config.decoder_preset
    if preset is None or DECODER_PRESETS.get(preset) != sizes:
        name = "custom" if preset is None else f"custom (from {preset})"
    else:
        name = preset
    return (
        f"ViT {name}: hidden {sizes['hidden_size']}, {sizes['num_hidden_layers']} layers, "
        f"{sizes['num_attention_heads']} heads, MLP {sizes['intermediate_size']}, patch {config.decoder_patch_size}"
    )


def rae_model_card(model: RAEModel, dataset: str, training_args=None, metrics: dict | None = None) -> str:
    """Markdown model card of an RAE: encoder, decoder, data, training recipe, measured metrics, usage."""
    config = model.config
    encoder = getattr(config, "encoder_name_or_path", None) or config.encoder_config.model_type
    size, grid = config.image_size, config.latent_grid_size
    lines = [
        *front_matter(["rae", "representation-autoencoder", "image-reconstruction", "rae_hf"]),
        f"# RAE decoder for `{encoder}`",
        "",
        "A Representation Autoencoder (Zheng et al., 2025): a frozen pretrained encoder and a ViT decoder trained",
        "with L1 + LPIPS + an adversarial DINO discriminator, trained with `rae_hf`.",
        "",
        *markdown_table(
            [
                (
                    "encoder",
                    f"`{encoder}` ({config.encoder_config.model_type}, frozen, input {config.encoder_input_size} px)",
                ),
                ("latent", f"{config.latent_channels} x {grid} x {grid}"),
                ("decoder", _decoder_description(config)),
                ("output", f"{size} x {size}"),
                ("training noise", f"tau {config.noise_tau} ({config.noise_distribution})"),
                ("latent normalization", "on" if config.normalize_latents else "off"),
                ("data", f"`{dataset}`"),
            ],
            header=("part", "value"),
        ),
    ]
    if training_args is not None:
        recipe = markdown_table(recipe_rows(training_args, RAE_TRAINING_KEYS))
        lines += ["", "## Training recipe", "", *recipe] if recipe else []
    published = informative_metrics(metrics or {})
    if published:
        lines += ["", "## Metrics", "", *markdown_table(published.items(), header=("metric", "value"))]
    lines += [
        "",
        "## Usage",
        "",
        "```python",
        "from transformers import AutoModel",
        "model = AutoModel.from_pretrained('<this repo>', trust_remote_code=True).eval()",
        f"latents = model.encode(images).latents  # images: [B, 3, H, W] in [0, 1] -> [B, {config.latent_channels}, "
        f"{grid}, {grid}]",
        f"reconstruction = model.decode(latents).reconstruction  # [B, 3, {size}, {size}] in [0, 1]",
        "```",
        "",
    ]
    return "\n".join(lines)


def write_model_card(output_dir: str, card: str) -> str:
    """Write `card` to `output_dir/README.md`; returns the path."""
    path = os.path.join(output_dir, "README.md")
    with open(path, "w") as f:
        f.write(card)
    return path
