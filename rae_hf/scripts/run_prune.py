"""Iterative pruning of a ViT variant (RSST, IMP + Refill, global magnitude IMP, or plain training), ending in a
physically smaller model. Replaces the seed's `launch_experiment.sh`.

    python run_prune.py recipes/prune/quickstart.yaml
    python run_prune.py recipes/prune/cifar10_vit_tiny_rsst.yaml --prune_rounds 4
    python run_prune.py --dataset_name cifar100 --model_preset vit_small --pretrained true --prune_method refill \
        --fillback_rate 0.2 --num_train_epochs 80 --output_dir runs/refill-c100

Per round: `output_dir/round_K/` (checkpoints, logs), a line in `rounds.jsonl` (+ `rounds.csv`, `rounds.md`,
`accuracy_vs_sparsity.png`); at the end `output_dir/final` (the shrunk model) and `output_dir/final_masked`.
`--resume_from_checkpoint last` continues at the first unfinished round, from its last checkpoint; a folder holding
another run (finished or interrupted) is refused unless resuming or `--overwrite_output_dir true`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from transformers import set_seed

from rae_hf.cli import parse_args, save_run_config, setup_logging
from rae_hf.data import ImageCollator, image_transform, load_image_splits
from rae_hf.prune.arguments import PruneDataArguments, PruneModelArguments
from rae_hf.prune.build import build_prune_model, classification_data, classification_presets, split_labels
from rae_hf.tools.synthetic_shapes import shape_splits
from rae_hf.trainers.prune_config import PruneTrainingArguments
from rae_hf.trainers.prune_rounds import PruneRounds, resume_point

logger = logging.getLogger("rae_hf")


def load_splits(data_args: PruneDataArguments, seed: int):
    """The raw train/validation splits: generated shapes for `--dataset_name synthetic`, else `load_image_splits`."""
    if data_args.dataset_name != "synthetic":
        return load_image_splits(data_args, seed=seed)
    data_args.image_column_name = "image"
    sizes = (data_args.synthetic_train_size, data_args.synthetic_validation_size, data_args.synthetic_image_size)
    return shape_splits(*sizes, seed=seed)


def main(argv: Sequence[str] | None = None) -> list[dict]:
    model_args, data_args, training_args = parse_args(
        (PruneModelArguments, PruneDataArguments, PruneTrainingArguments), argv
    )
    setup_logging(training_args)
    if model_args.torch_num_threads is not None:
        torch.set_num_threads(model_args.torch_num_threads)
    if training_args.auto is not None:
        logger.info("--auto %s is accepted for the seed launcher's users and ignored.", training_args.auto)
    start, checkpoint = resume_point(  # the shared guard and resume rule, before anything is written
        training_args.output_dir,
        training_args.resume_from_checkpoint,
        training_args.overwrite_output_dir,
        allow_partial_resume=training_args.allow_partial_resume,
    )

    set_seed(training_args.seed)
    splits = load_splits(data_args, training_args.seed)
    label_column, labels = split_labels(splits, data_args.label_column_name)
    model = build_prune_model(
        len(labels),
        labels,
        model_name_or_path=model_args.model_name_or_path,
        preset=model_args.model_preset,
        pretrained=model_args.pretrained,
        pretrained_source=model_args.pretrained_source,
        drop_path_rate=model_args.drop_path_rate,
        config_overrides=model_args.config_overrides,
        image_size=data_args.image_size,
        attn_implementation=model_args.attn_implementation,
    )
    size, norm = model.config.image_size, dict(mean=model.config.image_mean, std=model.config.image_std)
    transforms = [image_transform(preset, size, **norm) for preset in classification_presets(size)]  # train, eval
    collator = ImageCollator(data_args.max_bad_image_fraction)
    train, validation, scoring_batch = classification_data(
        splits,
        data_args.image_column_name,
        label_column,
        *transforms,
        collator,
        training_args.per_device_train_batch_size,
    )
    if training_args.should_save:  # the arguments were validated and the guard passed: record them
        save_run_config(training_args.output_dir, model_args, data_args, training_args)

    rounds = PruneRounds(model, training_args, train, validation, collator, scoring_batch)
    return rounds.run(start, checkpoint)  # saves output_dir/final (shrunk) and final_masked after the last round


if __name__ == "__main__":
    main()
