"""DINO / DINOv2 self-supervised pretraining of a ViT on your own images (multi-crop, iBOT, KoLeo, EMA teacher).

    python run_dino_pretrain.py recipes/dino/quickstart.yaml                       # CPU, minutes, toy textures
    python run_dino_pretrain.py recipes/dino/quickstart.yaml --check_data_pipeline true
    accelerate launch run_dino_pretrain.py recipes/dino/vits16_imagenet1k.yaml

The teacher backbone is exported to `output_dir/backbone/` (`AutoModel.from_pretrained`-loadable, with its image
processor): probe it with `run_probe.py --model_name_or_path <output_dir>/backbone` or use it as the RAE encoder with
`run_rae.py --model_name_or_path <output_dir>/backbone`.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys

from torch.utils.data import DataLoader
from transformers import set_seed

from rae_hf.cli import parse_args, save_run_config, setup_logging
from rae_hf.data import DataArguments, load_image_splits, with_image_transform
from rae_hf.data.images import BadImageError
from rae_hf.data.multicrop import MultiCropCollator, MultiCropSpec, check_multicrop_batches, save_crop_picture
from rae_hf.data.transforms import image_transform
from rae_hf.tools.toy_textures import make_toy_textures
from rae_hf.trainers.checkpoints import prepare_output_dir
from rae_hf.trainers.dino_arguments import DinoModelArguments, MultiCropArguments
from rae_hf.trainers.dino_callbacks import CropPictureCallback, KnnMonitorCallback
from rae_hf.trainers.dino_config import DinoTrainingArguments
from rae_hf.trainers.dino_setup import build_dino_model, knn_loaders, probe_knn
from rae_hf.trainers.dino_trainer import DinoTrainer

__all__ = ["main"]

logger = logging.getLogger("rae_hf")


def check_data(train, collator: MultiCropCollator, spec: MultiCropSpec, batch_size: int, batches: int, path: str):
    """--check_data_pipeline: print the views of a few batches, save the crop picture and report undecodable images;
    exit with status 1 on a problem."""
    print(f"Multi-crop {spec}: {spec.num_views} views per image")
    ok = check_multicrop_batches(DataLoader(train, batch_size=batch_size, collate_fn=collator), spec, batches)
    try:
        save_crop_picture(train, spec, path, max_bad_image_fraction=collator.max_bad_image_fraction)
        picture = f"Crop picture: {path}."
    except BadImageError as error:
        ok, picture = False, f"Crop picture not saved: {error}."
    if collator.num_skipped:
        print(
            f"{collator.num_skipped} of {collator.num_seen} images checked could not be decoded (named in the warnings "
            "above): training skips and counts them (skipped_images_total) up to --max_bad_image_fraction."
        )
    print(f"{picture} Data pipeline check {'passed' if ok else 'FAILED'}.")
    if not ok:
        sys.exit(1)
    return {"check_passed": True}


def main(argv: list[str] | None = None) -> dict:
    model_args, crop_args, data_args, training_args = parse_args(
        (DinoModelArguments, MultiCropArguments, DataArguments, DinoTrainingArguments), argv
    )
    setup_logging(training_args)
    set_seed(training_args.seed)
    output_dir, check_only = training_args.output_dir, crop_args.check_data_pipeline
    resume = None
    if not check_only:  # the guard, before anything is written: a refused run leaves the folder as it was
        overwrite = training_args.overwrite_output_dir
        resume = prepare_output_dir(output_dir, training_args.resume_from_checkpoint, overwrite)
    if crop_args.toy_data_dir:
        make_toy_textures(crop_args.toy_data_dir)
    spec = crop_args.spec(training_args.method)
    model = build_dino_model(
        spec,
        training_args.use_ibot,
        model_args.model_name_or_path,
        model_args.backbone_options(),
        model_args.head_options(),
    )
    if spec.global_size % model.config.patch_size:
        raise ValueError(
            f"global crop size {spec.global_size} must be a multiple of the patch {model.config.patch_size}."
        )
    splits = load_image_splits(data_args, seed=training_args.seed)
    transform = image_transform("multicrop", spec.global_size, spec=spec)
    train = with_image_transform(splits["train"], transform, data_args.image_column_name)
    grid = spec.global_size // model.config.patch_size if training_args.use_ibot else None
    collator = MultiCropCollator(
        grid, tuple(crop_args.mask_ratio), crop_args.mask_probability, data_args.max_bad_image_fraction
    )
    picture_path = os.path.join(output_dir, "crops.png")
    if check_only:
        batch_size = training_args.per_device_train_batch_size
        return check_data(train, collator, spec, batch_size, crop_args.check_batches, picture_path)

    trainer = DinoTrainer(model=model, args=training_args, train_dataset=train, data_collator=collator)
    if training_args.should_save:
        save_run_config(output_dir, model_args, crop_args, data_args, training_args)
        picture, _ = save_crop_picture(
            train, spec, picture_path, max_bad_image_fraction=collator.max_bad_image_fraction
        )
        trainer.add_callback(CropPictureCallback(trainer, picture))
    knn_data = crop_args.knn_data_arguments() if crop_args.has_knn_data else None
    if knn_data is not None:
        train_loader, eval_loader, num_classes = knn_loaders(
            knn_data,
            crop_args.knn_label_column,
            crop_args.knn_max_images,
            model,
            training_args.per_device_eval_batch_size,
        )
        trainer.add_callback(
            KnnMonitorCallback(
                trainer,
                train_loader,
                eval_loader,
                num_classes,
                lambda m: m.teacher["backbone"],
                training_args.knn_steps,
                training_args.knn_k,
            )
        )
    initial_dir = os.path.join(output_dir, "backbone_init")
    if crop_args.probe_before_after and training_args.should_save and resume is None:
        model.save_backbone(initial_dir)
    result = trainer.train(resume_from_checkpoint=resume)
    metrics = dict(result.metrics)
    backbone_dir = os.path.join(output_dir, "backbone")
    trainer.save_model()
    if training_args.should_save:
        model.save_backbone(backbone_dir)
        trainer.create_model_card(dataset=data_args.dataset_name or data_args.train_dir)
        shutil.copy(os.path.join(output_dir, "README.md"), backbone_dir)  # the card beside the exported backbone
        logger.info("Teacher backbone exported to %s (AutoModel.from_pretrained).", backbone_dir)
    if crop_args.probe_before_after and training_args.should_save:
        probe_dir = os.path.join(output_dir, "probe")
        label_column = crop_args.knn_label_column
        if os.path.isdir(initial_dir):
            before_dir = os.path.join(probe_dir, "before")
            metrics["knn_top1_before"] = probe_knn(initial_dir, knn_data, label_column, before_dir)
        metrics["knn_top1_after"] = probe_knn(backbone_dir, knn_data, label_column, os.path.join(probe_dir, "after"))
        before = metrics.get("knn_top1_before", math.nan)
        print(
            f"kNN top-1 of the teacher backbone: before pretraining {100 * before:.1f}%, "
            f"after {100 * metrics['knn_top1_after']:.1f}%"
        )
    return metrics
