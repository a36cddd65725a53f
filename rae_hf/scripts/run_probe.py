"""Evaluate a vision encoder's representations: a converged linear probe on cached frozen features (+ kNN), kNN only,
LoRA or full fine-tuning. Any HF vision model or an RAE checkpoint (its encoder).

    python run_probe.py recipes/probe/quickstart.yaml
    python run_probe.py --encoder_checkpoint runs/rae-dinov2-b --train_dir data/train --validation_dir data/val \
        --pooling cls mean --output_dir runs/probe-rae                    # default protocol: L-BFGS, l2 sweep
    python run_probe.py recipes/probe/dinov2_b_linear_imagenet.yaml        # --protocol dinov2: the paper's SGD grid
    python run_probe.py recipes/probe/quickstart.yaml --mode lora --output_dir runs/quickstart/probe-lora

Writes `probe_results.json`, `probe_results.md` and `accuracy_vs_lr.png` to --output_dir (the numbers first, the
plot last), plus the classifier (`ProbeClassifier`, loadable with `AutoModelForImageClassification` after
`import rae_hf`; a `--mode lora` run's is merged, its unmerged adapter is in `adapter/`: see
`rae_hf.probe.finetune`). Warnings (grid edge, non-convergence, small validation set, unseen labels) are logged and
written into both reports.
"""

from __future__ import annotations

import dataclasses
import logging
import os

from transformers import set_seed

from rae_hf.cli import parse_args, save_run_config, setup_logging
from rae_hf.data import DataArguments, ImageCollator
from rae_hf.data.transforms import image_transform
from rae_hf.hub import write_model_card
from rae_hf.probe import ProbeClassifier, ProbeEncoder, check_variants, feature_variants, load_encoder
from rae_hf.probe.arguments import ProbeArguments
from rae_hf.probe.data import id2label, labeled_split
from rae_hf.probe.finetune import apply_lora, classification_metrics, save_finetuned, unfreeze
from rae_hf.probe.report import log_to_wandb, probe_model_card, write_results
from rae_hf.probe.runner import (
    FeatureOptions,
    finetune_results,
    frozen_probe,
    load_labeled_splits,
    set_min_finetune_steps,
)
from rae_hf.tools.quickstart_assets import ensure_image_folders, ensure_tiny_models
from rae_hf.trainers.checkpoints import prepare_output_dir
from rae_hf.trainers.probe_config import ProbeTrainingArguments
from rae_hf.trainers.probe_trainer import ProbeTrainer

__all__ = ["main"]

logger = logging.getLogger("rae_hf.probe")


def feature_options(
    probe_args: ProbeArguments, data_args: DataArguments, training_args: ProbeTrainingArguments
) -> FeatureOptions:
    """The feature extraction and cache settings of the command line."""
    return FeatureOptions.for_data(
        data_args,
        batch_size=training_args.per_device_eval_batch_size,
        num_workers=training_args.dataloader_num_workers,
        precision=probe_args.extraction_precision,
        storage_dtype=probe_args.feature_dtype,
        cache_dir=probe_args.feature_cache_dir,
        verify_cache=probe_args.verify_feature_cache,
        crop_pct=probe_args.crop_pct,
        train_augment_passes=probe_args.train_augment_passes,
        seed=training_args.seed,
    )


def finetune(
    encoder: ProbeEncoder,
    splits,
    label_column: str,
    feature: str,
    probe_args: ProbeArguments,
    data_args: DataArguments,
    args: ProbeTrainingArguments,
    resume: str | None,
) -> dict:
    """LoRA or full fine-tuning of a `ProbeClassifier` on `feature` with `ProbeTrainer` (saved here); the results."""
    classes = id2label(splits["train"], label_column)
    classifier = ProbeClassifier.from_encoder(
        encoder, feature, classes, args.head_norm, args.head_init, args.head_init_std
    )
    if probe_args.mode == "lora":
        lora = (probe_args.lora_r, probe_args.lora_alpha, probe_args.lora_dropout, probe_args.lora_target_modules)
        model = apply_lora(classifier, *lora)
    else:
        model = unfreeze(classifier)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("%s fine-tuning of %s features: %d trainable parameters.", probe_args.mode, feature, trainable)
    set_min_finetune_steps(args, splits["train"])
    column, size, crop_pct = data_args.image_column_name, encoder.image_size, probe_args.crop_pct
    trainer = ProbeTrainer(
        model=model,
        args=args,
        train_dataset=labeled_split(splits["train"], column, label_column, image_transform("probe_train", size)),
        eval_dataset=labeled_split(
            splits["validation"], column, label_column, image_transform("probe_eval", size, crop_pct=crop_pct)
        ),
        data_collator=ImageCollator(max_bad_image_fraction=data_args.max_bad_image_fraction),
        compute_metrics=classification_metrics,
    )
    train_result = trainer.train(resume_from_checkpoint=resume)
    trainer.log_metrics("train", train_result.metrics)
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    if trainer.is_world_process_zero():
        save_finetuned(model, args.output_dir, probe_args.model_name_or_path)
    return finetune_results(
        probe_args.mode,
        encoder,
        splits,
        label_column,
        classes,
        feature,
        metrics,
        train_result.metrics,
        trainer.loss_drop_last_tenth(),
        trainer.state.global_step,
        trainable,
        args,
    )


def main(argv: list[str] | None = None) -> dict:
    probe_args, data_args, training_args = parse_args((ProbeArguments, DataArguments, ProbeTrainingArguments), argv)
    training_args.resolve_defaults(probe_args.mode)
    setup_logging(training_args)
    set_seed(training_args.seed)
    # before anything is written: never mix a new run into a finished one (probe_results.json counts as one)
    resume = prepare_output_dir(
        training_args.output_dir, training_args.resume_from_checkpoint, training_args.overwrite_output_dir
    )
    if training_args.should_save:
        save_run_config(training_args.output_dir, probe_args, data_args, training_args)
    if probe_args.quickstart_assets:
        with training_args.main_process_first(desc="quickstart inputs"):
            ensure_tiny_models(os.path.join(probe_args.quickstart_assets, "tiny-models"))
            ensure_image_folders(os.path.join(probe_args.quickstart_assets, "data"))

    encoder = load_encoder(probe_args.model_name_or_path, image_size=data_args.image_size)
    variants = feature_variants(probe_args.pooling, probe_args.n_last_blocks, probe_args.last_n_avgpool)
    check_variants(encoder, variants)
    splits, label_column = load_labeled_splits(data_args, training_args.seed, probe_args.label_column_name)
    classifier = None
    if probe_args.mode in ("linear", "knn"):
        options = feature_options(probe_args, data_args, training_args)
        results, classifier = frozen_probe(
            encoder, splits, label_column, variants, probe_args.mode, options, training_args
        )
    else:
        feature = variants[0].name
        results = finetune(encoder, splits, label_column, feature, probe_args, data_args, training_args, resume)
    for warning in results.get("warnings", []):
        logger.warning("%s: %s", warning["code"], warning["message"])
    if training_args.should_save:  # the numbers first, then the plot (write_results), then the classifier
        paths = write_results(training_args.output_dir, results)
        logger.info("Results: %s", ", ".join(paths.values()))
        if classifier is not None and probe_args.save_classifier:
            classifier.save_pretrained(training_args.output_dir)
        output_dir = training_args.output_dir
        if os.path.isfile(os.path.join(output_dir, "config.json")):  # a classifier was saved: its card
            config = ProbeClassifier.config_class.from_pretrained(output_dir)
            write_model_card(output_dir, probe_model_card(config, results, training_args))
        if "wandb" in training_args.report_to:
            config = {type(a).__name__: dataclasses.asdict(a) for a in (probe_args, data_args)}
            log_to_wandb(results, paths, training_args.run_name, config)
    return results
