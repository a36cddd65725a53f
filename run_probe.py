#!/usr/bin/env python
"""Evaluate a vision encoder's representations: a grid of linear heads on cached frozen features (+ kNN), kNN only,
LoRA or full fine-tuning. Any HF vision model or an RAE checkpoint (its encoder).

    python run_probe.py recipes/probe/dinov2_b_linear_imagenet.yaml
    python run_probe.py --encoder_checkpoint runs/rae-dinov2-b --train_dir data/train --validation_dir data/val \
        --pooling cls mean --learning_rates 1e-3 1e-2 0.1 --output_dir runs/probe-rae
    python run_probe.py recipes/probe/quickstart.yaml --mode lora --learning_rate 1e-3 --num_train_epochs 2

Writes `probe_results.json`, `probe_results.md` and `accuracy_vs_lr.png` to --output_dir, plus the classifier
(`ProbeClassifier`, loadable with `AutoModelForImageClassification` after `import rae_hf.probe`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time

import datasets
import torch
from transformers import set_seed

from rae_hf.cli import parse_args, resolve_resume_checkpoint, save_run_config, setup_logging
from rae_hf.data import DataArguments, ImageCollator, load_image_splits
from rae_hf.probe import (
    CachedFeatureSource,
    ComponentSpec,
    FeatureCache,
    FeatureSet,
    FeatureVariant,
    LinearHeadGrid,
    ProbeClassifier,
    ProbeEncoder,
    check_variants,
    evaluate_heads,
    feature_description,
    feature_variants,
    iter_components,
    knn_evaluate,
    load_encoder,
    train_heads,
)
from rae_hf.probe.arguments import ProbeArguments, ProbeTrainingArguments
from rae_hf.probe.data import (
    dataset_check,
    dataset_fingerprint,
    detect_label_column,
    id2label,
    labeled_split,
    probe_eval_transform,
    probe_train_transform,
)
from rae_hf.probe.features import feature_loader
from rae_hf.probe.finetune import ProbeTrainer, apply_lora, classification_metrics, unfreeze
from rae_hf.probe.report import best_head, log_to_wandb, write_results

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


class SplitFeatures:
    """Extracts (or reuses from the cache) the features of the run's splits."""

    def __init__(
        self,
        encoder: ProbeEncoder,
        spec: ComponentSpec,
        label_column: str,
        probe_args: ProbeArguments,
        data_args: DataArguments,
        training_args: ProbeTrainingArguments,
    ):
        self.encoder, self.spec, self.label_column = encoder, spec, label_column
        self.probe_args, self.data_args, self.training_args = probe_args, data_args, training_args
        self.cache = FeatureCache(probe_args.feature_cache_dir)
        self.storage_dtype = getattr(torch, probe_args.feature_dtype)
        self.cache_hits: dict[str, bool] = {}

    def get(self, splits, name: str, transform, seed: int | None = None, tag: str = "") -> FeatureSet:
        """Features of `splits[name]` under `transform`; `seed` seeds a random transform (one augmented pass)."""
        split, args = splits[name], self.data_args
        dataset = labeled_split(split, args.image_column_name, self.label_column, transform)
        source = {field: getattr(args, field) for field in SOURCE_FIELDS} | {"seed": self.training_args.seed}
        description = feature_description(
            self.encoder,
            self.spec,
            repr(transform) + (f" seed={seed}" if seed is not None else ""),
            name,
            dataset_fingerprint(split, source | {"split": name}),
            len(split) if isinstance(split, datasets.Dataset) else None,
            self.probe_args.extraction_precision,
            self.storage_dtype,
        )

        def extract():
            if seed is not None:  # DataLoader workers derive their seeds from the global RNG
                torch.manual_seed(seed)
            loader = feature_loader(
                dataset,
                self.training_args.per_device_eval_batch_size,
                self.training_args.dataloader_num_workers,
                max_bad_image_fraction=args.max_bad_image_fraction,
            )
            yield from iter_components(
                self.encoder,
                loader,
                self.spec,
                self.training_args.device,
                self.probe_args.extraction_precision,
                self.storage_dtype,
                desc=f"Features of {name}{tag}",
            )

        check = dataset_check(split, self.label_column) if self.cache.root else None
        features, hit = self.cache.get_or_extract(description, extract, self.spec.shapes(self.encoder), check)
        self.cache_hits[name + tag] = hit
        return features


def frozen_probe(
    encoder: ProbeEncoder,
    splits,
    label_column: str,
    variants: list[FeatureVariant],
    probe_args: ProbeArguments,
    data_args: DataArguments,
    training_args: ProbeTrainingArguments,
    logger: logging.Logger,
) -> dict:
    """Linear heads (a grid over learning rates x feature variants, trained in one pass) and/or kNN, on features
    extracted once per split."""
    if training_args.world_size > 1:
        raise ValueError(
            "--mode linear/knn runs in a single process: start it with python, not a distributed launcher."
        )
    device = training_args.device
    spec = ComponentSpec.for_variants(variants)
    extractor = SplitFeatures(encoder, spec, label_column, probe_args, data_args, training_args)
    eval_transform = probe_eval_transform(encoder.image_size, probe_args.crop_pct)
    timings: dict[str, float] = {}

    start = time.perf_counter()
    passes = probe_args.train_augment_passes
    if passes:
        train_transform = probe_train_transform(encoder.image_size)
        seeds = [training_args.seed + index for index in range(passes)]
        parts = [
            extractor.get(splits, "train", train_transform, seed, f" (pass {i + 1})") for i, seed in enumerate(seeds)
        ]
        train = FeatureSet.concatenate(parts)
    else:
        train = extractor.get(splits, "train", eval_transform)
    validation = extractor.get(splits, "validation", eval_transform)
    timings["features_s"] = time.perf_counter() - start
    labels = torch.cat([train.labels, validation.labels]).tolist()
    classes = id2label(splits["train"], label_column, observed=labels)
    num_classes = len(classes)
    logger.info("Features: %d train, %d validation, %d classes.", len(train), len(validation), num_classes)

    results: dict = {
        "mode": probe_args.mode,
        "encoder": {"name_or_path": encoder.name_or_path, **encoder.identity()},
        "data": {
            "num_train": len(train),
            "num_validation": len(validation),
            "num_classes": num_classes,
            "num_skipped_images": train.num_skipped + validation.num_skipped,
        },
        "feature_cache": {"dir": probe_args.feature_cache_dir, "hits": extractor.cache_hits},
        "timings_s": timings,
    }
    if probe_args.mode == "linear":
        results.update(
            linear_heads(encoder, train, validation, variants, classes, probe_args, training_args, timings, logger)
        )
    if probe_args.mode == "knn" or training_args.run_knn:
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
                training_args.knn_k,
                training_args.knn_temperature,
                batch_size=training_args.per_device_eval_batch_size,
            )
        ]
        timings["knn_s"] = time.perf_counter() - start
        best_knn = max(results["knn"], key=lambda entry: entry["top1"])
        logger.info("Best kNN: %s k=%d, top-1 %.2f%%.", best_knn["feature"], best_knn["k"], 100 * best_knn["top1"])
    return results


def linear_heads(
    encoder: ProbeEncoder,
    train: FeatureSet,
    validation: FeatureSet,
    variants: list[FeatureVariant],
    classes: dict[int, str],
    probe_args: ProbeArguments,
    training_args: ProbeTrainingArguments,
    timings: dict[str, float],
    logger: logging.Logger,
) -> dict:
    """Train the grid, evaluate every head, pick the best on validation and save it as a `ProbeClassifier`."""
    args, device = training_args, training_args.device
    heads = LinearHeadGrid(
        {variant.name: variant.dim(encoder) for variant in variants},
        args.learning_rates,
        len(classes),
        batchnorm=args.head_norm == "batchnorm",
        init=args.head_init,
        init_std=args.head_init_std,
        seed=args.seed,
    )
    start = time.perf_counter()
    trained = train_heads(
        heads,
        CachedFeatureSource(train, variants, device),
        num_epochs=args.num_train_epochs,
        batch_size=args.per_device_train_batch_size,
        device=device,
        optimizer=args.head_optimizer,
        momentum=args.head_momentum,
        weight_decay=args.weight_decay,
        warmup_epochs=args.head_warmup_epochs,
        scale_lr_by_batch=args.scale_lr_by_batch,
        max_steps=args.max_steps,
        seed=args.seed,
        progress=not args.disable_tqdm,
    )
    timings["heads_s"] = time.perf_counter() - start
    accuracies = evaluate_heads(
        heads, CachedFeatureSource(validation, variants, device), args.per_device_eval_batch_size, device
    )
    rows = [
        {
            "feature": spec.variant,
            "base_learning_rate": spec.learning_rate,
            "learning_rate": spec.learning_rate * trained.lr_scale,
            **accuracy,
            "train_loss": loss if math.isfinite(loss) else None,
            "diverged": not math.isfinite(loss),
        }
        for spec, accuracy, loss in zip(heads.specs, accuracies, trained.train_loss, strict=True)
    ]
    best = best_head(rows)
    if best is not None:
        logger.info(
            "Best head: %s, base lr %g: top-1 %.2f%%, top-5 %.2f%%.",
            best["feature"],
            best["base_learning_rate"],
            100 * best["top1"],
            100 * best["top5"],
        )
    if best is not None and probe_args.save_classifier and args.should_save:
        index = rows.index(best)
        classifier = ProbeClassifier.from_encoder(
            encoder, best["feature"], classes, args.head_norm, args.head_init, args.head_init_std
        )
        classifier.classifier.load_state_dict(heads.heads[index].state_dict())
        classifier.norm.load_state_dict(heads.norms[best["feature"]].state_dict())
        classifier.save_pretrained(args.output_dir)
    training = {
        "optimizer": args.head_optimizer,
        "steps": trained.steps,
        "epochs": trained.epochs,
        "batch_size": trained.batch_size,
        "lr_scale": trained.lr_scale,
        "head_norm": args.head_norm,
    }
    return {"heads": rows, "best": best, "training": training}


def finetune(
    encoder: ProbeEncoder,
    splits,
    label_column: str,
    variants: list[FeatureVariant],
    probe_args: ProbeArguments,
    data_args: DataArguments,
    training_args: ProbeTrainingArguments,
    logger: logging.Logger,
) -> dict:
    """LoRA or full fine-tuning of a `ProbeClassifier` (the first feature variant) with `Trainer`."""
    classes = id2label(splits["train"], label_column)
    feature = variants[0].name
    classifier = ProbeClassifier.from_encoder(
        encoder, feature, classes, training_args.head_norm, training_args.head_init, training_args.head_init_std
    )
    if probe_args.mode == "lora":
        model = apply_lora(
            classifier,
            probe_args.lora_r,
            probe_args.lora_alpha,
            probe_args.lora_dropout,
            probe_args.lora_target_modules,
        )
    else:
        model = unfreeze(classifier)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("%s fine-tuning of %s features: %d trainable parameters.", probe_args.mode, feature, trainable)

    column, size = data_args.image_column_name, encoder.image_size
    trainer = ProbeTrainer(
        model=model,
        args=training_args,
        train_dataset=labeled_split(splits["train"], column, label_column, probe_train_transform(size)),
        eval_dataset=labeled_split(
            splits["validation"], column, label_column, probe_eval_transform(size, probe_args.crop_pct)
        ),
        data_collator=ImageCollator(max_bad_image_fraction=data_args.max_bad_image_fraction),
        compute_metrics=classification_metrics,
    )
    train_result = trainer.train(resume_from_checkpoint=resolve_resume_checkpoint(training_args))
    trainer.log_metrics("train", train_result.metrics)
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    if trainer.is_world_process_zero():
        final = model.merge_and_unload() if probe_args.mode == "lora" else model
        final.save_pretrained(training_args.output_dir)
    return {
        "mode": probe_args.mode,
        "encoder": {"name_or_path": encoder.name_or_path, **encoder.identity()},
        "data": {
            "num_train": len(splits["train"]) if isinstance(splits["train"], datasets.Dataset) else None,
            "num_validation": len(splits["validation"]) if isinstance(splits["validation"], datasets.Dataset) else None,
            "num_classes": len(classes),
        },
        "finetune": {
            "feature": feature,
            "top1": metrics["eval_top1"],
            "top5": metrics["eval_top5"],
            "eval_loss": metrics["eval_loss"],
            "trainable_parameters": trainable,
            "train_runtime_s": train_result.metrics.get("train_runtime"),
        },
    }


def main(argv: list[str] | None = None) -> dict:
    probe_args, data_args, training_args = parse_args((ProbeArguments, DataArguments, ProbeTrainingArguments), argv)
    logger = setup_logging(training_args)
    set_seed(training_args.seed)
    if training_args.should_save:
        save_run_config(training_args.output_dir, probe_args, data_args, training_args)

    encoder = load_encoder(probe_args.model_name_or_path, image_size=data_args.image_size)
    variants = feature_variants(probe_args.pooling, probe_args.n_last_blocks, probe_args.last_n_avgpool)
    check_variants(encoder, variants)
    splits = load_image_splits(data_args, seed=training_args.seed)
    label_column = detect_label_column(splits["train"], probe_args.label_column_name)
    run = frozen_probe if probe_args.mode in ("linear", "knn") else finetune
    results = run(encoder, splits, label_column, variants, probe_args, data_args, training_args, logger)
    if training_args.should_save:
        paths = write_results(training_args.output_dir, results)
        logger.info("Results: %s", ", ".join(paths.values()))
        if "wandb" in training_args.report_to:
            config = {type(a).__name__: dataclasses.asdict(a) for a in (probe_args, data_args)}
            log_to_wandb(results, paths, training_args.run_name, config)
    return results


if __name__ == "__main__":
    main()
