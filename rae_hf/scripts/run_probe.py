"""Evaluate a vision encoder's representations: a converged linear probe on cached frozen features (+ kNN), kNN only,
LoRA or full fine-tuning. Any HF vision model or an RAE checkpoint (its encoder).

    python run_probe.py recipes/probe/quickstart.yaml
    python run_probe.py --encoder_checkpoint runs/rae-dinov2-b --train_dir data/train --validation_dir data/val \
        --pooling cls mean --output_dir runs/probe-rae                    # default protocol: L-BFGS, l2 sweep
    python run_probe.py recipes/probe/dinov2_b_linear_imagenet.yaml        # --protocol dinov2: the paper's SGD grid
    python run_probe.py recipes/probe/quickstart.yaml --mode lora --output_dir runs/quickstart/probe-lora

Writes `probe_results.json`, `probe_results.md` and `accuracy_vs_lr.png` to --output_dir (the numbers first, the
plot last), plus the classifier (`ProbeClassifier`, loadable with `AutoModelForImageClassification` after
`import rae_hf`). Warnings (grid edge, non-convergence, small validation set, unseen labels) are logged and written
into both reports.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time

import datasets
import torch
from transformers import set_seed

from rae_hf.cli import parse_args, resolve_resume_checkpoint, save_run_config, setup_logging
from rae_hf.data import DataArguments, ImageCollator, load_image_splits
from rae_hf.probe import (
    ComponentSpec,
    FeatureCache,
    FeatureSet,
    FeatureVariant,
    ProbeClassifier,
    ProbeEncoder,
    check_variants,
    feature_description,
    feature_variants,
    iter_components,
    knn_evaluate,
    load_encoder,
)
from rae_hf.probe.arguments import ProbeArguments
from rae_hf.probe.data import (
    check_labels,
    dataset_check,
    dataset_fingerprint,
    detect_label_column,
    id2label,
    labeled_split,
    probe_eval_transform,
    probe_train_transform,
    unseen_labels,
)
from rae_hf.probe.diagnostics import ProbeWarning, not_converged, small_validation, wilson_interval
from rae_hf.probe.features import feature_loader
from rae_hf.probe.finetune import apply_lora, classification_metrics, unfreeze
from rae_hf.probe.linear import linear_probe
from rae_hf.probe.report import log_to_wandb, write_results
from rae_hf.tools.quickstart_assets import ensure_image_folders, ensure_tiny_models
from rae_hf.trainers.checkpoints import check_output_dir
from rae_hf.trainers.probe_config import ProbeTrainingArguments
from rae_hf.trainers.probe_trainer import ProbeTrainer

__all__ = ["main"]

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
        self.cache = FeatureCache(probe_args.feature_cache_dir, verify=probe_args.verify_feature_cache)
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


def _unseen_warning(train_labels, validation_labels, classes: dict[int, str]) -> ProbeWarning | None:
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


def frozen_probe(
    encoder: ProbeEncoder,
    splits,
    label_column: str,
    variants: list[FeatureVariant],
    probe_args: ProbeArguments,
    data_args: DataArguments,
    training_args: ProbeTrainingArguments,
) -> tuple[dict, ProbeClassifier | None]:
    """The linear probe (`linear`) and/or kNN on features extracted once per split; returns the results and the
    selected classifier (None without linear heads)."""
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
    train_labels, validation_labels = train.labels.tolist(), validation.labels.tolist()
    classes = id2label(splits["train"], label_column, observed=train_labels + validation_labels)
    num_classes = len(classes)
    logger.info("Features: %d train, %d validation, %d classes.", len(train), len(validation), num_classes)

    warnings = [w for w in [_unseen_warning(train_labels, validation_labels, classes)] if w is not None]
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
    classifier = None
    if probe_args.mode == "linear":
        start = time.perf_counter()
        dims = {variant.name: variant.dim(encoder) for variant in variants}
        probe = linear_probe(train, validation, variants, dims, num_classes, training_args, device)
        timings["heads_s"] = time.perf_counter() - start
        warnings += probe.warnings
        results |= {"heads": probe.rows, "best": probe.best, "training": probe.training}
        if probe.best is not None:
            best = probe.best
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
            classifier = _classifier(encoder, probe, classes, training_args)
        else:
            logger.warning("Every head diverged: no classifier is saved. Lower the learning rates.")
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
        if probe_args.mode == "knn":
            warning = small_validation(best_knn["top1"], len(validation))
            warnings += [warning] if warning is not None else []
    results["warnings"] = [warning.to_dict() for warning in warnings]
    return results, classifier


def _classifier(encoder: ProbeEncoder, probe, classes: dict[int, str], args: ProbeTrainingArguments):
    """The selected head with its encoder as a `ProbeClassifier` (an L-BFGS head has standardization folded in)."""
    lbfgs = probe.best.get("solver") == "lbfgs"
    head_norm = "none" if lbfgs else args.head_norm
    classifier = ProbeClassifier.from_encoder(
        encoder, probe.best["feature"], classes, head_norm, args.head_init, args.head_init_std
    )
    with torch.no_grad():
        classifier.classifier.weight.copy_(probe.weight)
        classifier.classifier.bias.copy_(probe.bias)
    if probe.norm_state and head_norm == "batchnorm":
        classifier.norm.load_state_dict(probe.norm_state)
    return classifier


def _set_min_steps(training_args: ProbeTrainingArguments, train_split) -> None:
    """Raise the step count of a lora/full run to `min_finetune_steps` when the epochs give fewer (map-style data)."""
    if training_args.max_steps > 0 or not isinstance(train_split, datasets.Dataset):
        return
    batch = training_args.per_device_train_batch_size * training_args.world_size
    steps_per_epoch = math.ceil(len(train_split) / batch / training_args.gradient_accumulation_steps)
    steps = math.ceil(training_args.num_train_epochs * steps_per_epoch)
    if steps < training_args.min_finetune_steps:
        logger.info(
            "%g epochs are %d optimizer steps: training for --min_finetune_steps %d instead.",
            training_args.num_train_epochs,
            steps,
            training_args.min_finetune_steps,
        )
        training_args.max_steps = training_args.min_finetune_steps


def finetune(
    encoder: ProbeEncoder,
    splits,
    label_column: str,
    variants: list[FeatureVariant],
    probe_args: ProbeArguments,
    data_args: DataArguments,
    training_args: ProbeTrainingArguments,
) -> tuple[dict, None]:
    """LoRA or full fine-tuning of a `ProbeClassifier` (the first feature variant) with `ProbeTrainer`; the model
    is saved by the trainer, so no classifier is returned."""
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
    _set_min_steps(training_args, splits["train"])

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

    num_validation = len(splits["validation"]) if isinstance(splits["validation"], datasets.Dataset) else None
    loss_drop = trainer.loss_drop_last_tenth()
    warnings = [
        not_converged(
            f"{probe_args.mode} fine-tuning",
            loss_drop=loss_drop,
            advice="train longer (--min_finetune_steps, --num_train_epochs) or raise --learning_rate",
        )
    ]
    if num_validation:
        warnings.append(small_validation(metrics["eval_top1"], num_validation))
    if isinstance(splits["train"], datasets.Dataset) and isinstance(splits["validation"], datasets.Dataset):
        train_labels = splits["train"].select_columns([label_column]).with_format("numpy")[:][label_column]
        validation_labels = splits["validation"].select_columns([label_column]).with_format("numpy")[:][label_column]
        warnings.append(_unseen_warning(train_labels.tolist(), validation_labels.tolist(), classes))
    warnings = [w for w in warnings if w is not None]
    finetune_results = {
        "feature": feature,
        "top1": metrics["eval_top1"],
        "top5": metrics["eval_top5"],
        "eval_loss": metrics["eval_loss"],
        "train_loss": train_result.metrics.get("train_loss"),
        "loss_drop_last_tenth": loss_drop,
        "steps": trainer.state.global_step,
        "learning_rate": training_args.learning_rate,
        "head_lr_multiplier": training_args.head_lr_multiplier,
        "layer_decay": training_args.layer_decay,
        "trainable_parameters": trainable,
        "train_runtime_s": train_result.metrics.get("train_runtime"),
    }
    if num_validation:
        finetune_results["top1_ci95"] = list(wilson_interval(metrics["eval_top1"], num_validation))
    results = {
        "mode": probe_args.mode,
        "encoder": {"name_or_path": encoder.name_or_path, **encoder.identity()},
        "data": {
            "num_train": len(splits["train"]) if isinstance(splits["train"], datasets.Dataset) else None,
            "num_validation": num_validation,
            "num_classes": len(classes),
        },
        "finetune": finetune_results,
        "warnings": [warning.to_dict() for warning in warnings],
    }
    return results, None


def main(argv: list[str] | None = None) -> dict:
    probe_args, data_args, training_args = parse_args((ProbeArguments, DataArguments, ProbeTrainingArguments), argv)
    training_args.resolve_defaults(probe_args.mode)
    setup_logging(training_args)
    set_seed(training_args.seed)
    resume = training_args.resume_from_checkpoint is not None
    if training_args.should_save:  # before anything is written: never mix a new run into a finished one
        check_output_dir(training_args.output_dir, resume, training_args.overwrite_output_dir)
        save_run_config(training_args.output_dir, probe_args, data_args, training_args)
    if probe_args.quickstart_assets:
        with training_args.main_process_first(desc="quickstart inputs"):
            ensure_tiny_models(os.path.join(probe_args.quickstart_assets, "tiny-models"))
            ensure_image_folders(os.path.join(probe_args.quickstart_assets, "data"))

    encoder = load_encoder(probe_args.model_name_or_path, image_size=data_args.image_size)
    variants = feature_variants(probe_args.pooling, probe_args.n_last_blocks, probe_args.last_n_avgpool)
    check_variants(encoder, variants)
    splits = load_image_splits(data_args, seed=training_args.seed)
    label_column = detect_label_column(splits["train"], probe_args.label_column_name)
    check_labels(splits["train"], label_column, "train", data_args.train_dir)
    check_labels(splits["validation"], label_column, "validation", data_args.validation_dir or data_args.train_dir)
    run = frozen_probe if probe_args.mode in ("linear", "knn") else finetune
    results, classifier = run(encoder, splits, label_column, variants, probe_args, data_args, training_args)
    for warning in results.get("warnings", []):
        logger.warning("%s: %s", warning["code"], warning["message"])
    if training_args.should_save:  # the numbers first, then the plot (write_results), then the classifier
        paths = write_results(training_args.output_dir, results)
        logger.info("Results: %s", ", ".join(paths.values()))
        if classifier is not None and probe_args.save_classifier:
            classifier.save_pretrained(training_args.output_dir)
        if "wandb" in training_args.report_to:
            config = {type(a).__name__: dataclasses.asdict(a) for a in (probe_args, data_args)}
            log_to_wandb(results, paths, training_args.run_name, config)
    return results
