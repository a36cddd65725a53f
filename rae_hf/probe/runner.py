"""The probe runs as functions: labelled splits, the frozen-feature probe (linear heads and/or kNN on features
extracted once per split) and the report of a fine-tuning run.

`run_probe.py` parses its arguments and calls these; other methods (DINO's before/after kNN) call them directly.
They take plain values and the method's `ProbeTrainingArguments` (after `resolve_defaults`), never argv.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import datasets
import torch
from transformers import TrainingArguments

from rae_hf.data import DataArguments, load_image_splits
from rae_hf.data.transforms import image_transform
from rae_hf.models.probe import ProbeClassifier
from rae_hf.probe.cache import FeatureCache, feature_description
from rae_hf.probe.data import (
    check_labels,
    dataset_check,
    dataset_fingerprint,
    detect_label_column,
    id2label,
    labeled_split,
    unseen_labels,
)
from rae_hf.probe.diagnostics import ProbeWarning, not_converged, small_validation, wilson_interval
from rae_hf.probe.encoders import ProbeEncoder
from rae_hf.probe.features import ComponentSpec, FeatureSet, FeatureVariant, feature_loader, iter_components
from rae_hf.probe.knn import knn_evaluate
from rae_hf.probe.linear import LinearProbeResult, linear_probe

__all__ = [
    "SOURCE_FIELDS",
    "FeatureOptions",
    "SplitFeatures",
    "finetune_results",
    "frozen_probe",
    "load_labeled_splits",
    "probe_classifier",
    "set_min_finetune_steps",
    "unseen_warning",
]

logger = logging.getLogger("rae_hf.probe")

# DataArguments fields that identify a streamed split's content (the cache key of map-style splits uses datasets'
# own fingerprint instead).
SOURCE_FIELDS = (
    "dataset_name",
    "dataset_config_name",
    "train_dir",
    "validation_dir",
    "image_column_name",
    "train_split_name",
    "validation_split_name",
    "validation_fraction",
    "max_train_samples",
    "max_eval_samples",
)


@dataclasses.dataclass(frozen=True)
class FeatureOptions:
    """How features are extracted and cached (defaults: `run_probe.py`'s). `source` identifies streamed splits."""

    image_column: str = "image"
    batch_size: int = 64
    num_workers: int = 0
    precision: str = "auto"
    storage_dtype: str = "float16"
    cache_dir: str | None = None
    verify_cache: bool = True
    crop_pct: float = 0.875
    train_augment_passes: int = 0
    max_bad_image_fraction: float = 0.05
    seed: int = 42
    source: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def for_data(cls, data_args: DataArguments, **options: Any) -> FeatureOptions:
        """Options with the image column, bad-image limit and source identity of `data_args`."""
        return cls(
            image_column=data_args.image_column_name,
            max_bad_image_fraction=data_args.max_bad_image_fraction,
            source={name: getattr(data_args, name) for name in SOURCE_FIELDS},
            **options,
        )


def load_labeled_splits(data_args: DataArguments, seed: int, label_column: str | None = None) -> tuple[dict, str]:
    """The `train`/`validation` splits of `data_args` and their checked label column (`label_column`, or detected)."""
    splits = load_image_splits(data_args, seed=seed)
    column = detect_label_column(splits["train"], label_column)
    check_labels(splits["train"], column, "train", data_args.train_dir)
    check_labels(splits["validation"], column, "validation", data_args.validation_dir or data_args.train_dir)
    return splits, column


class SplitFeatures:
    """Extracts (or reuses from the cache) the features of a run's splits."""

    def __init__(self, encoder: ProbeEncoder, spec: ComponentSpec, label_column: str, options: FeatureOptions, device):
        self.encoder, self.spec, self.label_column = encoder, spec, label_column
        self.options, self.device = options, device
        self.cache = FeatureCache(options.cache_dir, verify=options.verify_cache)
        self.storage_dtype = getattr(torch, options.storage_dtype)
        self.cache_hits: dict[str, bool] = {}

    def get(self, splits, name: str, transform, seed: int | None = None, tag: str = "") -> FeatureSet:
        """Features of `splits[name]` under `transform`; `seed` seeds a random transform (one augmented pass)."""
        split, options = splits[name], self.options
        dataset = labeled_split(split, options.image_column, self.label_column, transform)
        source = dict(options.source) | {"seed": options.seed}
        description = feature_description(
            self.encoder,
            self.spec,
            repr(transform) + (f" seed={seed}" if seed is not None else ""),
            name,
            dataset_fingerprint(split, source | {"split": name}),
            len(split) if isinstance(split, datasets.Dataset) else None,
            options.precision,
            self.storage_dtype,
        )

        def extract():
            if seed is not None:  # DataLoader workers derive their seeds from the global RNG
                torch.manual_seed(seed)
            loader = feature_loader(
                dataset, options.batch_size, options.num_workers, max_bad_image_fraction=options.max_bad_image_fraction
            )
            yield from iter_components(
                self.encoder,
                loader,
                self.spec,
                self.device,
                options.precision,
                self.storage_dtype,
                desc=f"Features of {name}{tag}",
            )

        check = dataset_check(split, self.label_column) if self.cache.root else None
        features, hit = self.cache.get_or_extract(description, extract, self.spec.shapes(self.encoder), check)
        self.cache_hits[name + tag] = hit
        return features


def unseen_warning(train_labels, validation_labels, classes: dict[int, str]) -> ProbeWarning | None:
    """A warning when validation images belong to classes absent from train."""
    missing = unseen_labels(train_labels, validation_labels)
    if not missing:
        return None
    names = [classes.get(label, str(label)) for label in missing]
    count = sum(int(label) in set(missing) for label in validation_labels)
    return ProbeWarning(
        "unseen_labels",
        f"{count} validation images belong to classes absent from train ({names[:10]}"
        f"{' ...' if len(names) > 10 else ''}): no head can predict them, so top-1 is capped below 100%.",
    )


def _split_features(extractor: SplitFeatures, splits, encoder: ProbeEncoder, options: FeatureOptions):
    """Train features (one evaluation pass, or the seeded augmented passes concatenated) and validation features."""
    eval_transform = image_transform("probe_eval", encoder.image_size, crop_pct=options.crop_pct)
    passes = options.train_augment_passes
    if passes:
        train_transform = image_transform("probe_train", encoder.image_size)
        seeds = [options.seed + index for index in range(passes)]
        parts = [
            extractor.get(splits, "train", train_transform, seed, f" (pass {i + 1})") for i, seed in enumerate(seeds)
        ]
        train = FeatureSet.concatenate(parts)
    else:
        train = extractor.get(splits, "train", eval_transform)
    return train, extractor.get(splits, "validation", eval_transform)


def frozen_probe(
    encoder: ProbeEncoder,
    splits,
    label_column: str,
    variants: Sequence[FeatureVariant],
    mode: str,
    options: FeatureOptions,
    args: TrainingArguments,
) -> tuple[dict, ProbeClassifier | None]:
    """The linear probe (`mode` "linear", plus kNN with `args.run_knn`) or kNN only ("knn") on features extracted
    once per split; the results and the selected classifier (None without linear heads). `args`:
    `ProbeTrainingArguments` after `resolve_defaults(mode)`."""
    if args.world_size > 1:
        raise ValueError(
            "--mode linear/knn runs in a single process: start it with python, not a distributed launcher."
        )
    device = args.device
    extractor = SplitFeatures(encoder, ComponentSpec.for_variants(variants), label_column, options, device)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    train, validation = _split_features(extractor, splits, encoder, options)
    timings["features_s"] = time.perf_counter() - start
    train_labels, validation_labels = train.labels.tolist(), validation.labels.tolist()
    classes = id2label(splits["train"], label_column, observed=train_labels + validation_labels)
    num_classes = len(classes)
    logger.info("Features: %d train, %d validation, %d classes.", len(train), len(validation), num_classes)

    warnings = [w for w in [unseen_warning(train_labels, validation_labels, classes)] if w is not None]
    results: dict = {
        "mode": mode,
        "encoder": {"name_or_path": encoder.name_or_path, **encoder.identity()},
        "data": {
            "num_train": len(train),
            "num_validation": len(validation),
            "num_classes": num_classes,
            "num_skipped_images": train.num_skipped + validation.num_skipped,
        },
        "feature_cache": {"dir": options.cache_dir, "hits": extractor.cache_hits},
        "timings_s": timings,
    }
    classifier = None
    if mode == "linear":
        start = time.perf_counter()
        dims = {variant.name: variant.dim(encoder) for variant in variants}
        probe = linear_probe(train, validation, variants, dims, num_classes, args, device)
        timings["heads_s"] = time.perf_counter() - start
        warnings += probe.warnings
        results |= {"heads": probe.rows, "best": probe.best, "training": probe.training}
        if probe.best is not None:
            _log_best(probe.best)
            classifier = probe_classifier(encoder, probe, classes, args.head_norm, args.head_init, args.head_init_std)
        else:
            logger.warning("Every head diverged: no classifier is saved. Lower the learning rates.")
    if mode == "knn" or args.run_knn:
        start = time.perf_counter()
        results["knn"] = [
            {"feature": variant.name, **entry}
            for variant in variants
            for entry in knn_evaluate(
                train.variant(variant).to(device),
                train.labels.to(device),
                validation.variant(variant).to(device),
                validation.labels.to(device),
                num_classes,
                args.knn_k,
                args.knn_temperature,
                batch_size=options.batch_size,
            )
        ]
        timings["knn_s"] = time.perf_counter() - start
        best_knn = max(results["knn"], key=lambda entry: entry["top1"])
        logger.info("Best kNN: %s k=%d, top-1 %.2f%%.", best_knn["feature"], best_knn["k"], 100 * best_knn["top1"])
        if mode == "knn":
            warning = small_validation(best_knn["top1"], len(validation))
            warnings += [warning] if warning is not None else []
    results["warnings"] = [warning.to_dict() for warning in warnings]
    return results, classifier


def _log_best(best: dict) -> None:
    held = best.get("holdout_top1")
    where = f"held-out top-1 {100 * held:.2f}%, " if held is not None else ""
    logger.info(
        "Selected head: %s (%s): %svalidation top-1 %.2f%% (95%% CI %.1f-%.1f), top-5 %.2f%%.",
        best["feature"],
        f"l2 {best['l2']:g}" if "l2" in best else f"base lr {best['base_learning_rate']:g}",
        where,
        100 * best["top1"],
        100 * best["top1_ci95"][0],
        100 * best["top1_ci95"][1],
        100 * best["top5"],
    )


def probe_classifier(
    encoder: ProbeEncoder,
    probe: LinearProbeResult,
    classes: dict[int, str],
    head_norm: str,
    head_init: str,
    head_init_std: float,
) -> ProbeClassifier:
    """The selected head with its encoder as a `ProbeClassifier` (an L-BFGS head has standardization folded in)."""
    lbfgs = probe.best.get("solver") == "lbfgs"
    head_norm = "none" if lbfgs else head_norm
    classifier = ProbeClassifier.from_encoder(
        encoder, probe.best["feature"], classes, head_norm, head_init, head_init_std
    )
    with torch.no_grad():
        classifier.classifier.weight.copy_(probe.weight)
        classifier.classifier.bias.copy_(probe.bias)
    if probe.norm_state and head_norm == "batchnorm":
        classifier.norm.load_state_dict(probe.norm_state)
    return classifier


def finetune_results(
    mode: str,
    encoder: ProbeEncoder,
    splits,
    label_column: str,
    classes: dict[int, str],
    feature: str,
    metrics: dict,
    train_metrics: dict,
    loss_drop: float | None,
    steps: int,
    trainable: int,
    args: TrainingArguments,
) -> dict:
    """The results of a LoRA/full fine-tuning run (`metrics`: the final evaluation's) with its warnings."""
    num_validation = len(splits["validation"]) if isinstance(splits["validation"], datasets.Dataset) else None
    warnings = [
        not_converged(
            f"{mode} fine-tuning",
            loss_drop=loss_drop,
            advice="train longer (--min_finetune_steps, --num_train_epochs) or raise --learning_rate",
        )
    ]
    if num_validation:
        warnings.append(small_validation(metrics["eval_top1"], num_validation))
    if isinstance(splits["train"], datasets.Dataset) and isinstance(splits["validation"], datasets.Dataset):
        train_labels = splits["train"].select_columns([label_column]).with_format("numpy")[:][label_column]
        validation_labels = splits["validation"].select_columns([label_column]).with_format("numpy")[:][label_column]
        warnings.append(unseen_warning(train_labels.tolist(), validation_labels.tolist(), classes))
    finetune = {
        "feature": feature,
        "top1": metrics["eval_top1"],
        "top5": metrics["eval_top5"],
        "eval_loss": metrics["eval_loss"],
        "train_loss": train_metrics.get("train_loss"),
        "loss_drop_last_tenth": loss_drop,
        "steps": steps,
        "learning_rate": args.learning_rate,
        "head_lr_multiplier": args.head_lr_multiplier,
        "layer_decay": args.layer_decay,
        "trainable_parameters": trainable,
        "train_runtime_s": train_metrics.get("train_runtime"),
    }
    if num_validation:
        finetune["top1_ci95"] = list(wilson_interval(metrics["eval_top1"], num_validation))
    return {
        "mode": mode,
        "encoder": {"name_or_path": encoder.name_or_path, **encoder.identity()},
        "data": {
            "num_train": len(splits["train"]) if isinstance(splits["train"], datasets.Dataset) else None,
            "num_validation": num_validation,
            "num_classes": len(classes),
        },
        "finetune": finetune,
        "warnings": [warning.to_dict() for warning in warnings if warning is not None],
    }


def set_min_finetune_steps(args: TrainingArguments, train_split) -> None:
    """Raise the step count of a lora/full run to `args.min_finetune_steps` when the epochs give fewer (map-style
    data; `args`: `ProbeTrainingArguments`)."""
    if args.max_steps > 0 or not isinstance(train_split, datasets.Dataset):
        return
    batch = args.per_device_train_batch_size * args.world_size
    steps_per_epoch = math.ceil(len(train_split) / batch / args.gradient_accumulation_steps)
    steps = math.ceil(args.num_train_epochs * steps_per_epoch)
    if steps < args.min_finetune_steps:
        logger.info(
            "%g epochs are %d optimizer steps: training for --min_finetune_steps %d instead.",
            args.num_train_epochs,
            steps,
            args.min_finetune_steps,
        )
        args.max_steps = args.min_finetune_steps
