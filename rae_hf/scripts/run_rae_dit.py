"""RAE stage 2: train or evaluate a DiT-DH on the normalized latents of a frozen RAE (with latent statistics).

python run_rae_dit.py recipes/rae_dit/quickstart.yaml          # CPU, offline: RAE, stats, cache, DiT, grid
accelerate launch run_rae_dit.py recipes/rae_dit/ditdh_xl_dinov2_b_imagenet256.yaml
python run_rae_dit.py recipes/rae_dit/sample_ditdh_xl_imagenet256.yaml   # gFID/IS per guidance scale
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from accelerate import Accelerator
from transformers import set_seed

from rae_hf.cli import parse_args, save_run_config, setup_logging, train_and_save
from rae_hf.data import DataArguments, ImageCollator, image_transform, load_image_splits, with_image_transform
from rae_hf.data.latent_cache import LatentCollator, cached_split_latents
from rae_hf.evaluation.generation import GenerationEvalArguments
from rae_hf.models.dit import DiTDHConfig, DiTDHModel
from rae_hf.models.rae import RAEModel
from rae_hf.pipelines.pipeline_rae_dit import RAEDiTPipeline, guidance_sweep
from rae_hf.resources import find_recipe
from rae_hf.scripts import run_rae
from rae_hf.trainers.checkpoints import prepare_output_dir
from rae_hf.trainers.dit_config import DiTTrainingArguments
from rae_hf.trainers.dit_trainer import DiTTrainer, require_latent_statistics

HEAD_FIELDS = ("head_hidden_size", "head_num_layers", "head_num_attention_heads")
SIZE_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", *HEAD_FIELDS)


@dataclass
class ModelArguments:
    rae_name_or_path: str | None = field(
        default=None, metadata={"help": "The frozen RAE (saved by run_rae.py, with --compute_latent_stats run)."}
    )
    model_name_or_path: str | None = field(default=None, metadata={"help": "A saved DiT-DH to continue or evaluate."})
    model_preset: str = field(default="DiTDH-XL", metadata={"help": "DiTDH-S/B/L/XL for a new model."})
    hidden_size: int | None = field(default=None, metadata={"help": "Custom encoder width (overrides the preset)."})
    num_hidden_layers: int | None = field(default=None, metadata={"help": "Custom encoder depth."})
    num_attention_heads: int | None = field(default=None, metadata={"help": "Custom encoder heads."})
    head_hidden_size: int | None = field(default=None, metadata={"help": "Custom DDT head width (paper 2048)."})
    head_num_layers: int | None = field(default=None, metadata={"help": "Custom DDT head depth (paper 2)."})
    head_num_attention_heads: int | None = field(default=None, metadata={"help": "Custom DDT head heads (16)."})
    guidance_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Autoguidance: the guide DiT-DH (paper: DiTDH-S at 14 epochs)."}
    )
    quickstart_assets: str | None = field(
        default=None, metadata={"help": "Quickstart: make the RAE (with statistics) under this folder when missing."}
    )
    torch_threads: int | None = field(default=None, metadata={"help": "torch CPU threads (default: torch's)."})
    quickstart_rae_recipe: str = field(
        default="rae/quickstart", metadata={"help": "Quickstart: the RAE recipe (path or shipped name) if missing."}
    )


@dataclass
class LatentArguments:
    latent_cache: str | None = field(
        default=None, metadata={"help": "Encode the training images (and their flips) once into this folder."}
    )
    latent_cache_dtype: str = field(default="float32", metadata={"help": "float32 (exact) or float16 (half size)."})
    latent_cache_verify: bool = field(default=True, metadata={"help": "Checksum a reused cache (else sizes only)."})
    hflip: bool = field(default=True, metadata={"help": "Random horizontal flips (paper: yes)."})
    cache_latents_only: bool = field(default=False, metadata={"help": "Build/verify --latent_cache, then exit."})


def ensure_quickstart_rae(assets: str, recipe: str, logger) -> str:
    """The quickstart RAE with latent statistics under `assets/rae_dit/rae-stats`: from the RAE quickstart's model
    (`assets/rae`) when it exists, else from a cheaper run of its recipe (L1 only: no LPIPS, no GAN phase)."""
    stats = os.path.join(assets, "rae_dit", "rae-stats")
    if os.path.isfile(os.path.join(stats, "config.json")):
        return stats
    recipe = find_recipe(recipe)
    rae = os.path.join(assets, "rae")
    if not os.path.isfile(os.path.join(rae, "model.safetensors")):
        rae = os.path.join(assets, "rae_dit", "rae")
        logger.info("Training the quickstart RAE (%s, L1 only: no LPIPS, no GAN phase) into %s", recipe, rae)
        gan_off = ["--disc_upd_start", "99", "--disc_start", "99", "--fid_steps", "0"]
        short = ["--num_train_epochs", "16", "--perceptual_weight", "0", *gan_off]
        run_rae.main([recipe, "--output_dir", rae, "--overwrite_output_dir", "true", "--save_strategy", "no", *short])
    run_rae.main([recipe, "--model_name_or_path", rae, "--compute_latent_stats", "--output_dir", stats])
    return stats


def build_model(args: ModelArguments, rae: RAEModel, num_classes: int) -> DiTDHModel:
    if args.model_name_or_path:
        return DiTDHModel.from_pretrained(args.model_name_or_path)
    sizes = {name: getattr(args, name) for name in SIZE_FIELDS if getattr(args, name) is not None}
    latent = dict(in_channels=rae.config.latent_channels, input_size=rae.config.latent_grid_size)
    return DiTDHModel(DiTDHConfig.from_preset(args.model_preset, num_classes=num_classes, **latent, **sizes))


def run_generation_eval(model, rae, guide, eval_args: GenerationEvalArguments, args) -> list[dict]:
    """gFID/IS of `num_eval_samples` class-balanced samples per guidance scale -> `eval_results.json`."""
    accelerator = Accelerator(cpu=args.use_cpu)
    pipe = RAEDiTPipeline(transformer=model.eval(), vae=rae.eval()).to(accelerator.device)
    guide = None if guide is None else guide.to(accelerator.device).eval()
    return guidance_sweep(
        pipe, guidance="cfg" if args.guidance == "none" else args.guidance, guidance_model=guide,
        guidance_interval=tuple(args.guidance_interval), num_inference_steps=args.sample_steps, sampler=args.sampler,
        seed=args.seed, autocast_dtype=torch.bfloat16 if args.bf16 else None, accelerator=accelerator,
        **eval_args.sweep_kwargs(args),
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    model_args, latent_args, data_args, eval_args, training_args = parse_args(
        (ModelArguments, LatentArguments, DataArguments, GenerationEvalArguments, DiTTrainingArguments), argv
    )
    logger = setup_logging(training_args)
    set_seed(training_args.seed)
    if model_args.torch_threads:
        torch.set_num_threads(model_args.torch_threads)
    if model_args.quickstart_assets and not model_args.rae_name_or_path:
        with training_args.main_process_first(desc="quickstart RAE"):
            assets, recipe = model_args.quickstart_assets, model_args.quickstart_rae_recipe
            model_args.rae_name_or_path = ensure_quickstart_rae(assets, recipe, logger)
    if not model_args.rae_name_or_path:
        raise ValueError("--rae_name_or_path is required: the RAE whose latents the DiT learns.")
    rae = RAEModel.from_pretrained(model_args.rae_name_or_path)
    require_latent_statistics(rae, model_args.rae_name_or_path)
    guide_path = model_args.guidance_model_name_or_path
    guide = DiTDHModel.from_pretrained(guide_path) if guide_path else None

    size = data_args.image_size or rae.config.image_size
    splits = load_image_splits(data_args, seed=training_args.seed)
    features = splits["train"].features or {}
    class_names = list(getattr(features.get("label"), "names", None) or []) or None
    model = build_model(model_args, rae, len(class_names or []))
    column = data_args.image_column_name
    if eval_args.compute_fid_stats:
        validation = with_image_transform(splits["validation"], image_transform("adm_center_crop", size), column)
        eval_args.save_fid_stats(validation, ImageCollator(), training_args)
        return
    if training_args.do_eval and not training_args.do_train:
        run_generation_eval(model, rae, guide, eval_args, training_args)
        return

    rae.to(training_args.device)
    if latent_args.latent_cache:
        train = cached_split_latents(
            splits["train"], rae, latent_args.latent_cache, size, column, training_args.per_device_eval_batch_size,
            latent_args.latent_cache_dtype, latent_args.latent_cache_verify, latent_args.hflip, training_args.device,
        )  # fmt: skip
        collator = LatentCollator()
        if latent_args.cache_latents_only:
            return
    else:
        keep = ["label"] if class_names else []
        transform = image_transform("adm_center_crop", size, hflip=latent_args.hflip)
        train, collator = with_image_transform(splits["train"], transform, column, keep), ImageCollator()
    resume = prepare_output_dir(  # before anything is written to output_dir: never mix two runs
        training_args.output_dir, training_args.resume_from_checkpoint, training_args.overwrite_output_dir,
        allow_partial_resume=training_args.allow_partial_resume,
    )  # fmt: skip
    trainer = DiTTrainer(
        model=model, args=training_args, rae=rae, guidance_model=guide, class_names=class_names,
        train_dataset=train, data_collator=collator,
    )  # fmt: skip
    if training_args.should_save:
        save_run_config(training_args.output_dir, model_args, latent_args, data_args, eval_args, training_args)
    dataset = data_args.dataset_name or data_args.train_dir
    train_and_save(trainer, resume, dataset)  # saves the EMA weights (applied at the end of training)
    if training_args.do_eval:
        run_generation_eval(trainer.model, rae, guide, eval_args, training_args)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset=dataset)


if __name__ == "__main__":
    main()
