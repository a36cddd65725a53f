"""Train or evaluate JiT (pixel diffusion with a plain ViT) on images or on text rendered as pixels.

    python run_jit.py recipes/jit/quickstart.yaml                # CPU, offline, minutes: sample grid + model
    python run_jit.py recipes/jit/text_quickstart.yaml           # the text-as-pixels task, same
    accelerate launch run_jit.py recipes/jit/imagenet256_b16.yaml
    python run_jit.py --model_name_or_path runs/jit --do_eval --do_train false --fid_reference_stats in256.npz \
        --guidance_scales 1.0 2.0 3.0 --output_dir runs/jit-eval   # FID/IS, one row per CFG scale
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from accelerate import Accelerator
from transformers import set_seed

from rae_hf.cli import parse_args, save_run_config, setup_logging, train_and_save
from rae_hf.data import DataArguments, ImageCollator, image_transform, load_image_splits, with_image_transform
from rae_hf.evaluation.generation import GenerationEvalArguments, evaluate_guidance_scales
from rae_hf.models.jit import JiTConfig, JiTModel
from rae_hf.text_pixels import TextPixelCodec, load_text_splits, make_quickstart_texts, with_text_pixels
from rae_hf.tools.quickstart_assets import ensure_image_folders
from rae_hf.trainers.checkpoints import prepare_output_dir
from rae_hf.trainers.jit_callbacks import TextRecoveryCallback, jit_sample_fn
from rae_hf.trainers.jit_config import JiTTrainingArguments
from rae_hf.trainers.jit_trainer import JiTTrainer

TASKS = ("image", "text")
SIZE_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "bottleneck_dim", "in_context_start")


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "A saved JiT (folder or hub id) to continue training or to evaluate."}
    )
    official_checkpoint: str | None = field(
        default=None, metadata={"help": "Start from an official JiT .pth (its model_ema1 weights; converted)."}
    )
    model_preset: str = field(default="JiT-B/16", metadata={"help": "JiT-<B|L|H|G>/<patch> for a new model."})
    num_classes: int | None = field(
        default=None, metadata={"help": "Classes (default: the dataset's label count; 0 = unconditional)."}
    )
    hidden_size: int | None = field(default=None, metadata={"help": "Custom width (overrides the preset)."})
    num_hidden_layers: int | None = field(default=None, metadata={"help": "Custom depth."})
    num_attention_heads: int | None = field(default=None, metadata={"help": "Custom heads."})
    bottleneck_dim: int | None = field(default=None, metadata={"help": "Custom patch-embedding bottleneck."})
    in_context_start: int | None = field(default=None, metadata={"help": "Custom first block with class tokens."})
    dropout: float | None = field(default=None, metadata={"help": "Middle-block dropout (preset: 0.2 H/G, 0 B/L)."})
    attn_implementation: str = field(default="sdpa", metadata={"help": "sdpa, or eager (official fp32 softmax)."})


@dataclass
class TaskArguments:
    task: str = field(default="image", metadata={"help": "image (class-conditional pixels) or text (text-as-pixels)."})
    quickstart_data: str | None = field(
        default=None, metadata={"help": "Make the quickstart's synthetic images/texts in this folder on first use."}
    )
    text_column: str = field(default="text", metadata={"help": "Text task: the column holding the texts."})
    label_column: str | None = field(
        default=None, metadata={"help": "Text task: an integer column used as the class (default: unconditional)."}
    )
    text_validation_file: str | None = field(default=None, metadata={"help": "Text task: held-out .txt/.jsonl."})
    tokenizer_name: str | None = field(default=None, metadata={"help": "Text task: HF tokenizer (default: bytes)."})
    codeword_scheme: str = field(default="bits", metadata={"help": "Text task: bits (robust) or flat (seed)."})
    hflip: bool = field(default=True, metadata={"help": "Image task: random horizontal flips (paper: yes)."})

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"--task {self.task!r} must be one of {TASKS}.")


def build_model(args: ModelArguments, num_classes: int, image_size: int | None) -> JiTModel:
    """A saved JiT, an official checkpoint, or a new model from the preset (explicit sizes win)."""
    if args.model_name_or_path:
        model = JiTModel.from_pretrained(args.model_name_or_path)
    elif args.official_checkpoint:
        from rae_hf.convert.jit import convert_jit_checkpoint

        model = convert_jit_checkpoint(args.official_checkpoint)
    else:
        overrides = {name: getattr(args, name) for name in (*SIZE_FIELDS, "dropout")} | {"image_size": image_size}
        overrides = {k: v for k, v in overrides.items() if v is not None}
        model = JiTModel(JiTConfig.from_preset(args.model_preset, num_classes=num_classes, **overrides))
    if args.attn_implementation not in ("sdpa", "eager"):
        raise ValueError(f"--attn_implementation {args.attn_implementation!r} must be sdpa or eager.")
    model.config._attn_implementation = args.attn_implementation  # read by JiTAttention at each forward
    return model


def _label_count(split) -> int:
    feature = (split.features or {}).get("label")
    return int(getattr(feature, "num_classes", 0) or 0)


def image_datasets(data_args, task_args, image_size: int, seed: int):
    splits = load_image_splits(data_args, seed=seed)
    column = data_args.image_column_name
    keep = ["label"] if "label" in (splits["train"].column_names or []) else []
    train_transform = image_transform("adm_center_crop", image_size, hflip=task_args.hflip)  # ADM crop (+ flip)
    train = with_image_transform(splits["train"], train_transform, column, keep)
    validation = with_image_transform(splits["validation"], image_transform("adm_center_crop", image_size), column)
    return train, validation, _label_count(splits["train"]) if keep else 0


def run_generation_eval(model, eval_args: GenerationEvalArguments, training_args) -> list[dict]:
    """FID/IS of `num_eval_samples` class-balanced samples per CFG scale; `eval_results.json` (one row each)."""
    accelerator, args = Accelerator(cpu=training_args.use_cpu), training_args
    model.to(accelerator.device).eval()
    conditional = model.config.num_classes > 0 and not args.unconditional
    autocast = torch.bfloat16 if args.bf16 else None
    seed, interval = args.seed + accelerator.process_index, tuple(args.guidance_interval)
    return evaluate_guidance_scales(
        lambda scale: jit_sample_fn(model, args.sample_steps, args.sampler, scale, interval, seed, autocast),
        accelerator=accelerator,
        num_classes=model.config.num_classes if conditional else None,
        **eval_args.sweep_kwargs(args),
    )


def main(argv: list[str] | None = None) -> None:
    model_args, task_args, data_args, eval_args, training_args = parse_args(
        (ModelArguments, TaskArguments, DataArguments, GenerationEvalArguments, JiTTrainingArguments), argv
    )
    setup_logging(training_args)
    set_seed(training_args.seed)
    if task_args.quickstart_data:
        with training_args.main_process_first(desc="quickstart data"):
            if task_args.task == "text":
                make_quickstart_texts(task_args.quickstart_data)
            else:
                ensure_image_folders(task_args.quickstart_data, image_size=data_args.image_size or 64)
            if training_args.inception_weights and not os.path.isfile(training_args.inception_weights):
                from rae_hf.metrics import save_random_inception_weights  # pipeline check only: random Inception

                save_random_inception_weights(training_args.inception_weights)

    codec = None
    if task_args.task == "text":
        if model_args.model_name_or_path:  # the codec follows the saved model's geometry
            config = JiTConfig.from_pretrained(model_args.model_name_or_path)
        else:
            config = JiTConfig.from_preset(model_args.model_preset, image_size=data_args.image_size)
        tokenizer = None
        if task_args.tokenizer_name:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(task_args.tokenizer_name)
        codec = TextPixelCodec(
            config.image_size, config.patch_size, scheme=task_args.codeword_scheme, tokenizer=tokenizer
        )
        splits = load_text_splits(data_args, task_args.text_validation_file, training_args.seed, task_args.text_column)
        train = with_text_pixels(splits["train"], codec, task_args.text_column, task_args.label_column)
        validation = with_text_pixels(splits["validation"], codec, task_args.text_column, task_args.label_column)
        num_classes = 0 if task_args.label_column is None else _label_count(splits["train"])
    else:
        preset = JiTConfig.from_preset(model_args.model_preset, image_size=data_args.image_size)
        train, validation, num_classes = image_datasets(data_args, task_args, preset.image_size, training_args.seed)
    if model_args.num_classes is not None:
        num_classes = model_args.num_classes
    model = build_model(model_args, num_classes, data_args.image_size)
    collator = ImageCollator(max_bad_image_fraction=data_args.max_bad_image_fraction)

    if eval_args.compute_fid_stats:
        eval_args.save_fid_stats(validation, collator, training_args)
        return
    if training_args.do_eval and not training_args.do_train:
        run_generation_eval(model, eval_args, training_args)
        return

    resume = prepare_output_dir(  # before anything is written: never mix a new run into another one
        training_args.output_dir,
        training_args.resume_from_checkpoint,
        training_args.overwrite_output_dir,
        allow_partial_resume=training_args.allow_partial_resume,
    )
    trainer = JiTTrainer(
        model=model, args=training_args, train_dataset=train, eval_dataset=validation, data_collator=collator
    )
    if codec is not None:
        count, column = training_args.text_metrics_samples, task_args.text_column
        train_texts, eval_texts = ([t or "" for t in splits[name][:count][column]] for name in ("train", "validation"))
        steps = training_args.text_metrics_steps
        trainer.add_callback(TextRecoveryCallback(trainer, codec, train_texts, eval_texts, steps, trainer.ema1))
    if training_args.should_save:
        save_run_config(training_args.output_dir, model_args, task_args, data_args, eval_args, training_args)

    dataset = data_args.dataset_name or data_args.train_dir
    train_and_save(trainer, resume, dataset)  # saves the first EMA (applied at the end of training)
    if training_args.do_eval:
        run_generation_eval(trainer.model, eval_args, training_args)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset=dataset)


if __name__ == "__main__":
    main()
