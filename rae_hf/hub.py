"""Model cards for every folder a run publishes (`save_pretrained` / `push_to_hub`), from one builder.

`model_card` writes the YAML front matter the Hub reads (`library_name`, `tags`, `datasets`, `base_model`,
`pipeline_tag`, `license`), a title and summary, a table of the model's parts, the recipe's key settings, a metrics
table and a usage snippet that runs. Each method passes its own parts: `rae_model_card` here, `classifier_model_card`
(probe and prune classifiers), and the trainers' `model_card_text` (JiT, DINO, DiT). Helpers: `markdown_table`,
`recipe_rows` (training arguments as typed: `cosine_with_min_lr`, not `SchedulerType.COSINE_WITH_MIN_LR`),
`informative_metrics` (drops `total_flos` and other bookkeeping), `hub_id`, `card_model_id`, `write_model_card`.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from enum import Enum
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from .models.rae import DECODER_PRESETS, RAEModel

__all__ = [
    "COMMON_TRAINING_KEYS",
    "NON_INFORMATIVE_METRICS",
    "RAE_TRAINING_KEYS",
    "card_model_id",
    "classifier_model_card",
    "format_value",
    "hub_id",
    "informative_metrics",
    "markdown_table",
    "model_card",
    "rae_model_card",
    "recipe_rows",
    "write_model_card",
]

COMMON_TRAINING_KEYS = (
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "lr_scheduler_type",
    "weight_decay",
    "bf16",
    "seed",
)
RAE_TRAINING_KEYS = (
    *COMMON_TRAINING_KEYS,
    "perceptual_weight",
    "disc_weight",
    "disc_start",
    "disc_upd_start",
    "ema_decay",
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


def hub_id(name: str | None) -> str | None:
    """`name` when it reads as a Hub id (`owner/name` or `name`, not a local folder), else None."""
    if not name or os.path.exists(name) or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name):
        return None
    return name


def card_model_id(training_args: Any = None, folder: str | None = None) -> str:
    """What a usage snippet loads: `--hub_model_id` when set, else the folder as the run named it."""
    if training_args is not None and getattr(training_args, "hub_model_id", None):
        return training_args.hub_model_id
    if folder is not None:
        return folder
    return getattr(training_args, "output_dir", None) or "path/to/this/folder"


def model_card(
    title: str,
    summary: str,
    usage: Sequence[str],
    tags: Sequence[str],
    parts: Iterable[tuple[str, Any]] = (),
    settings: Iterable[tuple[str, Any]] = (),
    metrics: Mapping[str, Any] | None = None,
    dataset: str | None = None,
    base_model: str | None = None,
    pipeline_tag: str | None = None,
    license: str | None = None,
    library_name: str = "transformers",
) -> str:
    """A Hub model card: YAML front matter (`datasets` / `base_model` only when they are Hub ids), `# title`,
    `summary`, a table of `parts`, `## Training recipe` (`settings`), `## Metrics` (`informative_metrics`) and
    `## Usage` (the Python lines `usage`)."""
    data = ModelCardData(
        library_name=library_name,
        tags=list(dict.fromkeys(["rae_hf", *tags])),
        datasets=[hub_id(dataset)] if hub_id(dataset) else None,
        base_model=hub_id(base_model),
        pipeline_tag=pipeline_tag,
        license=license,
    )
    lines = ["---", data.to_yaml(), "---", f"# {title}", "", summary]
    table = markdown_table(parts, header=("part", "value"))
    lines += ["", *table] if table else []
    if dataset:
        lines += ["", f"Training data: `{dataset}`."]
    recipe = markdown_table(settings)
    lines += ["", "## Training recipe", "", *recipe] if recipe else []
    published = informative_metrics(metrics or {})
    if published:
        lines += ["", "## Metrics", "", *markdown_table(published.items(), header=("metric", "value"))]
    lines += ["", "## Usage", "", "```python", *usage, "```", ""]
    return "\n".join(lines)


def classifier_model_card(
    config: Any,
    title: str,
    summary: str,
    model_id: str,
    tags: Sequence[str],
    remote_code: bool,
    image_processor: bool,
    **card_fields: Any,
) -> str:
    """`model_card` of an image classifier folder (probe heads, pruned ViTs): its classes, input size and an
    `AutoModelForImageClassification` snippet (`trust_remote_code` when the folder ships its code; through the
    folder's `AutoImageProcessor` when it has one, else [0, 1] pixels as the model takes them)."""
    size = config.image_size
    labels = [config.id2label[i] for i in sorted(config.id2label)]
    shown = ", ".join(labels[:10]) + (", ..." if len(labels) > 10 else "")
    remote = ", trust_remote_code=True" if remote_code else ""
    usage = ["import torch"]
    usage += [] if remote_code else ["import rae_hf  # registers the classifier with transformers' Auto classes"]
    if image_processor:
        usage += [
            "from PIL import Image",
            "from transformers import AutoImageProcessor, AutoModelForImageClassification",
            f"processor = AutoImageProcessor.from_pretrained({model_id!r})",
            f"model = AutoModelForImageClassification.from_pretrained({model_id!r}{remote}).eval()",
            f'inputs = processor(images=[Image.new("RGB", ({size}, {size}))], return_tensors="pt")',
        ]
    else:
        usage += [
            "from transformers import AutoModelForImageClassification",
            f"model = AutoModelForImageClassification.from_pretrained({model_id!r}{remote}).eval()",
            f"inputs = {{'pixel_values': torch.rand(2, 3, {size}, {size})}}  # [B, 3, H, W] in [0, 1]",
        ]
    usage += [
        "with torch.no_grad():",
        "    labels = model(**inputs).logits.argmax(-1)",
        "print([model.config.id2label[int(i)] for i in labels])",
    ]
    parts = [("classes", f"{len(labels)}: {shown}"), ("input", f"{size} x {size}"), *card_fields.pop("parts", [])]
    return model_card(
        title, summary, usage, ["image-classification", *tags], parts=parts, pipeline_tag="image-classification",
        **card_fields,
    )  # fmt: skip


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
    input_size = config.encoder_input_size
    usage = [
        "import torch",
        "from transformers import AutoModel",
        f"model = AutoModel.from_pretrained({card_model_id(training_args)!r}, trust_remote_code=True).eval()",
        f"images = torch.rand(2, 3, {input_size}, {input_size})  # [B, 3, H, W] in [0, 1]",
        "with torch.no_grad():",
        f"    latents = model.encode(images).latents  # -> [B, {config.latent_channels}, {grid}, {grid}]",
        f"    reconstruction = model.decode(latents).reconstruction  # [B, 3, {size}, {size}] in [0, 1]",
    ]
    parts = [
        ("encoder", f"`{encoder}` ({config.encoder_config.model_type}, frozen, input {input_size} px)"),
        ("latent", f"{config.latent_channels} x {grid} x {grid}"),
        ("decoder", _decoder_description(config)),
        ("output", f"{size} x {size}"),
        ("training noise", f"tau {config.noise_tau} ({config.noise_distribution})"),
        ("latent normalization", "on" if config.normalize_latents else "off"),
    ]
    return model_card(
        f"RAE decoder for `{encoder}`",
        "A Representation Autoencoder (Zheng et al., 2025): a frozen pretrained encoder and a ViT decoder trained "
        "with L1 + LPIPS + an adversarial DINO discriminator, trained with `rae_hf`.",
        usage,
        ["rae", "representation-autoencoder", "image-reconstruction"],
        parts=parts,
        settings=recipe_rows(training_args, RAE_TRAINING_KEYS) if training_args is not None else (),
        metrics=metrics,
        dataset=dataset,
        base_model=getattr(config, "encoder_name_or_path", None),
    )


def write_model_card(output_dir: str, card: str, license: str | None = None) -> str:
    """Write `card` to `output_dir/README.md` (with `license` set in its metadata when given); returns the path."""
    if license:
        parsed = ModelCard(card)
        parsed.data.license = license
        card = str(parsed)
    path = os.path.join(output_dir, "README.md")
    with open(path, "w") as f:
        f.write(card)
    return path
