"""What a pruning run is built from: the ViT variant to prune, the names of its `image_transform` presets, its
labelled image data, and the fixed batch that Refill's activation criteria score."""

from __future__ import annotations

from collections.abc import Mapping

import datasets
import torch
from transformers import AutoModelForImageClassification

from ..data import ImageCollator
from ..models.vit import ViTVariantForImageClassification, build_vit
from ..probe.data import detect_label_column, id2label, labeled_split

SMALL_IMAGE_SIZE = 64  # up to this side (CIFAR): padded random crop + square resize; above: random-resized crop


def build_prune_model(
    num_labels: int,
    labels: Mapping[int, str],
    model_name_or_path: str | None = None,
    preset: str = "vit_tiny",
    pretrained: bool = False,
    pretrained_source: str | None = None,
    drop_path_rate: float = 0.0,
    config_overrides: str | None = None,
    image_size: int | None = None,
    attn_implementation: str = "sdpa",
) -> ViTVariantForImageClassification:
    """The model to prune: a saved one, or `preset` (optionally with pretrained weights) with `num_labels` classes;
    `config_overrides` ('a=1,b=0.5') and `image_size` change the preset's values."""
    names = {"id2label": {i: str(n) for i, n in labels.items()}, "label2id": {str(n): i for i, n in labels.items()}}
    if model_name_or_path is not None:
        model = AutoModelForImageClassification.from_pretrained(
            model_name_or_path, num_labels=num_labels, ignore_mismatched_sizes=True, **names
        )
        if not isinstance(model, ViTVariantForImageClassification):
            raise ValueError(f"--model_name_or_path {model_name_or_path} is not a ViT variant checkpoint.")
        return model
    overrides = dict(num_labels=num_labels, drop_path_rate=drop_path_rate, **names)
    overrides.update(parse_overrides(config_overrides))
    if image_size is not None:
        overrides["image_size"] = image_size
    model = build_vit(preset, pretrained, pretrained_source, **overrides)
    model.config._attn_implementation = attn_implementation
    for module in model.modules():
        if hasattr(module, "attn_implementation"):
            module.attn_implementation = attn_implementation
    return model


def parse_overrides(text: str | None) -> dict[str, int | float]:
    """`'a=1,b=0.5'` -> `{"a": 1, "b": 0.5}` (a clear error naming --config_overrides otherwise)."""
    values: dict[str, int | float] = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--config_overrides: {item!r} is not key=value.")
        try:
            values[key.strip()] = int(value) if value.strip().lstrip("-").isdigit() else float(value)
        except ValueError:
            raise ValueError(f"--config_overrides: {item!r} needs a number.") from None
    return values


def split_labels(splits: datasets.DatasetDict, label_column: str | None = None) -> tuple[str, dict[int, str]]:
    """The label column (detected when None) and the class names of the training split."""
    label_column = detect_label_column(splits["train"], label_column)
    return label_column, id2label(splits["train"], label_column)


def classification_presets(image_size: int) -> tuple[str, str]:
    """Names of the (train, eval) `image_transform` presets of a classifier at `image_size`: small images (<= 64 px,
    CIFAR): padded random crop + flip / square resize (the seed's); larger: random-resized crop + flip / resize to
    256/224 of the size + centre crop. Normalize them with the model's `image_mean` / `image_std`."""
    return ("padded_crop_train", "resize") if image_size <= SMALL_IMAGE_SIZE else ("probe_train", "probe_eval")


def classification_data(
    splits: datasets.DatasetDict,
    image_column: str,
    label_column: str,
    train_transform,
    eval_transform,
    collator: ImageCollator,
    scoring_size: int,
):
    """(train, validation) labelled datasets under the transforms, and the scoring batch: the first `scoring_size`
    training examples with the eval transform (identical on every process)."""
    train = labeled_split(splits["train"], image_column, label_column, train_transform)
    validation = labeled_split(splits["validation"], image_column, label_column, eval_transform)
    scoring = labeled_split(splits["train"], image_column, label_column, eval_transform)
    if hasattr(scoring, "__len__"):
        examples = [scoring[i] for i in range(min(scoring_size, len(scoring)))]
    else:
        examples = list(scoring.take(scoring_size))
    batch: dict[str, torch.Tensor] = collator(examples)
    return train, validation, batch
