"""Train (stage 1) a Representation Autoencoder decoder on a frozen vision encoder.

    accelerate launch run_rae.py --model_name_or_path facebook/dinov2-with-registers-base \
        --dataset_name ILSVRC/imagenet-1k --output_dir runs/rae-dinov2-b --bf16
    python run_rae.py recipes/rae/quickstart.yaml [--any_argument value ...]   # offline, makes its inputs
    python run_rae.py recipes/rae/dinov2_b_vitxl_imagenet.yaml --compute_latent_stats   # stats, then exit
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass, field

import torch
from accelerate import Accelerator
from transformers import AutoConfig, set_seed

from rae_hf.cli import parse_args, save_run_config, setup_logging, train_and_save
from rae_hf.data import (
    DataArguments,
    ImageCollator,
    image_transform,
    load_image_splits,
    shard_loader,
    with_image_transform,
)
from rae_hf.evaluation import compute_reference_statistics, evaluate_reconstruction
from rae_hf.models.rae import RAEModel
from rae_hf.models.rae.latent_stats import compute_latent_stats
from rae_hf.tools.quickstart_assets import ensure_image_folders, ensure_tiny_models
from rae_hf.trainers.checkpoints import prepare_output_dir
from rae_hf.trainers.rae_config import RAETrainingArguments
from rae_hf.trainers.rae_trainer import RAETrainer
from rae_hf.visualization import save_reconstruction_grid


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        metadata={
            "help": "Encoder to build the RAE on (hub id or local path, e.g. facebook/dinov2-with-registers-base)"
            ", or a saved RAE (model_type 'rae') to continue training or evaluate."
        }
    )
    decoder_preset: str | None = field(
        default="ViT-XL", metadata={"help": "ViT-S/B/L/XL (paper: ViT-XL); --decoder_* sizes override its values."}
    )
    decoder_hidden_size: int | None = field(default=None, metadata={"help": "Custom decoder width."})
    decoder_num_hidden_layers: int | None = field(default=None, metadata={"help": "Custom decoder depth."})
    decoder_num_attention_heads: int | None = field(default=None, metadata={"help": "Custom decoder heads."})
    decoder_intermediate_size: int | None = field(default=None, metadata={"help": "Custom decoder MLP width."})
    decoder_patch_size: int = field(default=16, metadata={"help": "Decoder patch (output = token grid x patch)."})
    encoder_input_size: int | None = field(
        default=None, metadata={"help": "Encoder input size; default from its image processor (224 DINOv2-B)."}
    )
    noise_tau: float = field(default=0.8, metadata={"help": "Training latent noise strength (paper: 0.8)."})
    noise_distribution: str = field(default="uniform", metadata={"help": "'uniform' (official) or 'half_normal'."})
    compute_latent_stats: bool = field(
        default=False,
        metadata={
            "help": "Compute exact latent mean/var over the training split, store them in the model, save "
            "it to output_dir and exit."
        },
    )
    latent_stats_max_samples: int | None = field(
        default=None, metadata={"help": "Use the first N training images for the stats."}
    )
    num_sample_images: int = field(default=16, metadata={"help": "Validation images in the final reconstruction grid."})
    quickstart_assets: str | None = field(
        default=None,
        metadata={
            "help": "Folder of the offline quickstart's inputs: the tiny models and synthetic images the recipe "
            "names are made there on first use (e.g. runs/quickstart)."
        },
    )


DECODER_SIZE_FIELDS = (
    "decoder_hidden_size",
    "decoder_num_hidden_layers",
    "decoder_num_attention_heads",
    "decoder_intermediate_size",
)


@dataclass
class EvaluationArguments:
    eval_num_samples: int | None = field(
        default=10000, metadata={"help": "With --do_eval (and no --do_train): images of the validation split to score."}
    )
    save_reconstructions: bool = field(
        default=False, metadata={"help": "With --do_eval: write reconstructions as PNGs and an ADM-style .npz."}
    )
    compute_fid_stats: str | None = field(
        default=None,
        metadata={
            "help": "Save the Inception statistics (mu, sigma) of the validation split's center-cropped images "
            "to this .npz (the rFID reference), then exit."
        },
    )


def build_model(args: ModelArguments) -> RAEModel:
    """A saved RAE is loaded as is; any other checkpoint becomes the frozen encoder of a new RAE.

    The decoder starts from `--decoder_preset` and any `--decoder_*` size given wins over that preset's value
    (`RAEConfig`'s one preset rule).
    """
    if AutoConfig.from_pretrained(args.model_name_or_path).model_type == "rae":
        return RAEModel.from_pretrained(args.model_name_or_path)
    sizes = {name: getattr(args, name) for name in DECODER_SIZE_FIELDS if getattr(args, name) is not None}
    return RAEModel.from_encoder_pretrained(
        args.model_name_or_path,
        encoder_input_size=args.encoder_input_size,
        decoder_preset=args.decoder_preset,
        decoder_patch_size=args.decoder_patch_size,
        noise_tau=args.noise_tau,
        noise_distribution=args.noise_distribution,
        **sizes,
    )


def run_latent_stats(model: RAEModel, dataset, collator, model_args, training_args, logger) -> None:
    """Exact statistics over this process's shard of the training split; merged across processes."""
    accelerator = Accelerator(cpu=training_args.use_cpu)
    loader = shard_loader(
        dataset,
        accelerator,
        collator,
        training_args.per_device_eval_batch_size,
        training_args.dataloader_num_workers,
        model_args.latent_stats_max_samples,
    )
    model.to(accelerator.device)
    mean, var, count = compute_latent_stats(model, loader, accelerator)
    model.set_latent_stats(mean.cpu(), var.cpu())
    logger.info("Latent statistics over %d images: mean |mu| %.4f, mean var %.4f", count, mean.abs().mean(), var.mean())
    if accelerator.is_main_process:
        model.save_pretrained(training_args.output_dir)


def run_evaluation(model, eval_dataset, collator, eval_args, training_args, logger) -> None:
    """`--compute_fid_stats PATH`: reference statistics; `--do_eval` without `--do_train`: rFID/PSNR/SSIM."""
    accelerator = Accelerator(cpu=training_args.use_cpu, mixed_precision="bf16" if training_args.bf16 else "no")
    common = dict(
        batch_size=training_args.per_device_eval_batch_size,
        num_samples=eval_args.eval_num_samples,
        inception_weights=training_args.inception_weights,
        num_workers=training_args.dataloader_num_workers,
    )
    if eval_args.compute_fid_stats:
        count = compute_reference_statistics(eval_dataset, collator, accelerator, eval_args.compute_fid_stats, **common)
        logger.info("Saved the Inception statistics of %d images to %s", count, eval_args.compute_fid_stats)
        return
    save_dir = os.path.join(training_args.output_dir, "reconstructions") if eval_args.save_reconstructions else None
    results = evaluate_reconstruction(
        model,
        eval_dataset,
        collator,
        accelerator,
        reference_stats=training_args.fid_reference_stats,
        save_dir=save_dir,
        **common,
    )
    if accelerator.is_main_process:
        os.makedirs(training_args.output_dir, exist_ok=True)
        results["model"] = model.config.name_or_path
        path = os.path.join(training_args.output_dir, "eval_results.json")
        with open(path, "w") as f:
            json.dump(results, f, indent=2)
        logger.info(
            "rFID %.4f  PSNR %.3f  SSIM %.4f over %d images -> %s",
            results["rfid"],
            results["psnr"],
            results["ssim"],
            results["num_samples"],
            path,
        )


def main(argv: list[str] | None = None) -> None:
    model_args, data_args, eval_args, training_args = parse_args(
        (ModelArguments, DataArguments, EvaluationArguments, RAETrainingArguments), argv
    )
    logger = setup_logging(training_args)
    set_seed(training_args.seed)
    if model_args.quickstart_assets:
        with training_args.main_process_first(desc="quickstart inputs"):
            ensure_tiny_models(os.path.join(model_args.quickstart_assets, "tiny-models"))
            ensure_image_folders(os.path.join(model_args.quickstart_assets, "data"))
    model = build_model(model_args)
    image_size = data_args.image_size or model.config.image_size
    splits = load_image_splits(data_args, seed=training_args.seed)
    column = data_args.image_column_name
    collator = ImageCollator(max_bad_image_fraction=data_args.max_bad_image_fraction)
    eval_transform = image_transform("center_crop", image_size)

    if model_args.compute_latent_stats:
        train_dataset = with_image_transform(splits["train"], eval_transform, column)
        run_latent_stats(model, train_dataset, collator, model_args, training_args, logger)
        return

    eval_dataset = with_image_transform(splits["validation"], eval_transform, column)
    if eval_args.compute_fid_stats or (training_args.do_eval and not training_args.do_train):
        run_evaluation(model, eval_dataset, collator, eval_args, training_args, logger)
        return

    train_transform = image_transform("rae_train", image_size, resize_size=data_args.resize_size)
    train_dataset = with_image_transform(splits["train"], train_transform, column)
    resume = prepare_output_dir(  # before anything is written: never mix a new run into another one
        training_args.output_dir,
        training_args.resume_from_checkpoint,
        training_args.overwrite_output_dir,
        allow_partial_resume=training_args.allow_partial_resume,
    )
    trainer = RAETrainer(
        model=model, args=training_args, train_dataset=train_dataset, eval_dataset=eval_dataset, data_collator=collator
    )
    if training_args.should_save:  # the arguments were validated: record them
        save_run_config(training_args.output_dir, model_args, data_args, eval_args, training_args)

    dataset = data_args.dataset_name or data_args.train_dir
    train_and_save(trainer, resume, dataset)  # EMA weights (applied at train end), encoder included: self-contained
    if trainer.is_world_process_zero():
        examples = itertools.islice(
            (e for e in eval_dataset if e["pixel_values"] is not None), model_args.num_sample_images
        )
        samples = torch.stack([e["pixel_values"] for e in examples])
        model.eval()
        with torch.no_grad():
            reconstructions = model(samples.to(model.device)).reconstruction
        path = os.path.join(training_args.output_dir, "reconstructions.png")
        logger.info("Saved the model and %s", save_reconstruction_grid(samples, reconstructions, path))
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset=dataset)


if __name__ == "__main__":
    main()
