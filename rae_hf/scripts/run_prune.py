"""Iterative pruning of a ViT variant (RSST, IMP + Refill, global magnitude IMP, or plain training), ending in a
physically smaller model. Replaces the seed's `launch_experiment.sh`.

    python run_prune.py recipes/prune/quickstart.yaml
    python run_prune.py recipes/prune/cifar10_vit_tiny_rsst.yaml --prune_rounds 4
    python run_prune.py --dataset_name cifar100 --model_preset vit_small --pretrained true --prune_method refill \
        --fillback_rate 0.2 --num_train_epochs 80 --output_dir runs/refill-c100

Per round: `output_dir/round_K/` (checkpoints, logs), a line in `rounds.jsonl` (+ `rounds.csv`, `rounds.md`,
`accuracy_vs_sparsity.png`); at the end `output_dir/final` (the shrunk model) and `output_dir/final_masked`.
`--resume_from_checkpoint last` continues at the first unfinished round, from its last checkpoint.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import random
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field

import datasets
import safetensors.torch
import torch
from PIL import Image, ImageDraw
from torchvision.transforms import v2
from transformers import AutoModelForImageClassification, set_seed

from rae_hf.cli import parse_args, save_run_config, setup_logging
from rae_hf.data import DataArguments, ImageCollator, load_image_splits
from rae_hf.models.vit import ViTVariantConfig, ViTVariantForImageClassification, build_vit, image_processor
from rae_hf.probe.data import detect_label_column, id2label, labeled_split
from rae_hf.prune import (
    PRUNING_CALLBACKS,
    RewindCaptureCallback,
    RoundMasks,
    capture_state,
    load_rewind_state,
    pruning_stats,
    rewind,
    save_rewind_state,
    shrink_model,
)
from rae_hf.prune.report import ROUND_FILES, append_round, read_rounds
from rae_hf.tools.make_dummy_dataset import CLASS_NAMES, _draw_shape
from rae_hf.trainers.checkpoints import last_complete_checkpoint
from rae_hf.trainers.prune_config import PruneTrainingArguments
from rae_hf.trainers.prune_trainer import PruneTrainer

logger = logging.getLogger("rae_hf")

# Short names of the seed's datasets -> hub dataset, columns and split layout (seed: CIFAR-10 45k/5k, CIFAR-100 test
# set used for validation). `synthetic` generates shape images in memory (`synthetic_splits`).
DATASET_ALIASES: dict[str, dict] = {
    "cifar10": dict(dataset_name="uoft-cs/cifar10", image_column_name="img", label_column_name="label",
                    validation_split_name="validation", validation_fraction=0.1),
    "cifar100": dict(dataset_name="uoft-cs/cifar100", image_column_name="img", label_column_name="fine_label",
                     validation_split_name="test"),
    "imagenet": dict(dataset_name="ILSVRC/imagenet-1k", image_column_name="image", label_column_name="label",
                     validation_split_name="validation"),
}  # fmt: skip
MASKS_FILE = "masks.safetensors"


@dataclass
class PruneModelArguments:
    """Which ViT variant is pruned."""

    model_preset: str = field(
        default="vit_tiny",
        metadata={"help": "vit_tiny | vit_small | vit_base (32 px, patch 4) | vit_{small,base,large}_imagenet (224)."},
    )
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Start from a saved ViTVariantForImageClassification instead of a preset."}
    )
    pretrained: bool = field(
        default=False, metadata={"help": "Load ImageNet weights (timm AugReg) with resized patch/position embeddings."}
    )
    pretrained_source: str | None = field(
        default=None, metadata={"help": "Hub id or local folder/file of timm or transformers ViT weights to load."}
    )
    drop_path_rate: float = field(default=0.0, metadata={"help": "Stochastic depth rate of the last block."})
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "Preset values to change, e.g. 'num_hidden_layers=4,hidden_size=128' (integers/floats)."},
    )
    attn_implementation: str = field(default="sdpa", metadata={"help": "sdpa or eager."})
    torch_num_threads: int | None = field(
        default=None,
        metadata={
            "help": "CPU threads of torch's operators (torch.set_num_threads); unset: torch's default (OMP_NUM_THREADS "
            "or the core count). 1 avoids oversubscription with small models on a small or shared CPU."
        },
    )

    def __post_init__(self) -> None:
        if self.torch_num_threads is not None and self.torch_num_threads < 1:
            raise ValueError(f"torch_num_threads must be >= 1 (or unset), got {self.torch_num_threads}.")


@dataclass
class PruneDataArguments(DataArguments):
    """`DataArguments` plus the seed's dataset names, the label column and the generated quickstart data."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "cifar10 | cifar100 | imagenet | synthetic (generated shapes, offline), any hub image-"
            "classification dataset, or a save_to_disk folder. Exclusive with --train_dir."
        },
    )
    label_column_name: str | None = field(default=None, metadata={"help": "Label column (detected when unset)."})
    synthetic_train_size: int = field(default=512, metadata={"help": "Training images of --dataset_name synthetic."})
    synthetic_validation_size: int = field(default=128, metadata={"help": "Validation images of synthetic."})
    synthetic_image_size: int = field(default=32, metadata={"help": "Side of the synthetic images."})

    def __post_init__(self) -> None:
        alias = DATASET_ALIASES.get(self.dataset_name or "")
        if alias is not None:
            for key, value in alias.items():
                if key == "dataset_name" or getattr(self, key) == type(self).__dataclass_fields__[key].default:
                    setattr(self, key, value)
        super().__post_init__()


def synthetic_splits(args: PruneDataArguments, seed: int) -> datasets.DatasetDict:
    """Train/validation splits of generated shape images (4 classes), images undecoded as `load_image_splits`.

    An easy but honest task for a ViT trained from scratch in a CPU minute: the class is the shape alone (circle,
    square, triangle, cross: `rae_hf.tools.make_dummy_dataset`'s classes), filled in a random bright colour on a plain
    random dark background, with random size (0.3-0.42 of the side) and position; classes balanced, the validation
    images drawn from their own seed. (`make_dummy_dataset`'s shapes on colour gradients stay at chance there.)"""
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(CLASS_NAMES))})
    splits = {}
    for offset, (name, size) in enumerate(
        (("train", args.synthetic_train_size), ("validation", args.synthetic_validation_size))
    ):
        rng = random.Random(seed * 2 + offset)
        labels = [index % len(CLASS_NAMES) for index in range(size)]
        images = [synthetic_image(rng, args.synthetic_image_size, CLASS_NAMES[label]) for label in labels]
        split = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
        splits[name] = split.cast_column("image", datasets.Image(decode=False))
    return datasets.DatasetDict(splits)


def synthetic_image(rng: random.Random, size: int, shape: str) -> Image.Image:
    """One `size` x `size` image of `shape` (a `CLASS_NAMES` entry) for `synthetic_splits`."""
    image = Image.new("RGB", (size, size), tuple(rng.randrange(96) for _ in range(3)))
    radius = rng.uniform(0.3, 0.42) * size
    center = (rng.uniform(radius, size - radius), rng.uniform(radius, size - radius))
    _draw_shape(ImageDraw.Draw(image), shape, *center, radius, tuple(rng.randrange(160, 256) for _ in range(3)))
    return image


def image_transforms(image_size: int, mean: Sequence[float], std: Sequence[float]) -> tuple[v2.Compose, v2.Compose]:
    """(train, eval) transforms to normalized tensors. Small images (<= 64 px, CIFAR): the seed's random crop with
    4-pixel padding and flip; larger: random-resized crop and flip, eval resize to 256/224 of the size + center crop."""
    tail = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    bicubic = v2.InterpolationMode.BICUBIC
    if image_size <= 64:
        resize = v2.Resize((image_size, image_size), interpolation=bicubic, antialias=True)
        train = [resize, v2.RandomCrop(image_size, padding=image_size // 8), v2.RandomHorizontalFlip()]
        evaluation = [resize]
    else:
        train = [v2.RandomResizedCrop(image_size, interpolation=bicubic, antialias=True), v2.RandomHorizontalFlip()]
        evaluation = [
            v2.Resize(round(image_size * 256 / 224), interpolation=bicubic, antialias=True),
            v2.CenterCrop(image_size),
        ]
    return v2.Compose(train + tail), v2.Compose(evaluation + tail)


def build_model(
    args: PruneModelArguments, num_labels: int, labels: dict[int, str], image_size: int | None = None
) -> ViTVariantForImageClassification:
    """The model to prune: a saved one, or a preset (optionally with pretrained weights) sized for the dataset;
    `image_size` (`--image_size`) overrides the preset's input size."""
    names = {"id2label": {i: str(n) for i, n in labels.items()}, "label2id": {str(n): i for i, n in labels.items()}}
    if args.model_name_or_path is not None:
        model = AutoModelForImageClassification.from_pretrained(
            args.model_name_or_path, num_labels=num_labels, ignore_mismatched_sizes=True, **names
        )
        if not isinstance(model, ViTVariantForImageClassification):
            raise ValueError(f"--model_name_or_path {args.model_name_or_path} is not a ViT variant checkpoint.")
        return model
    overrides = dict(num_labels=num_labels, drop_path_rate=args.drop_path_rate, **names)
    overrides.update(parse_overrides(args.config_overrides))
    if image_size is not None:
        overrides["image_size"] = image_size
    model = build_vit(args.model_preset, args.pretrained, args.pretrained_source, **overrides)
    model.config._attn_implementation = args.attn_implementation
    for module in model.modules():
        if hasattr(module, "attn_implementation"):
            module.attn_implementation = args.attn_implementation
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


def load_data(data_args: PruneDataArguments, seed: int) -> tuple[datasets.DatasetDict, str, dict[int, str]]:
    """Raw splits, the label column and the class names."""
    if data_args.dataset_name == "synthetic":
        splits = synthetic_splits(data_args, seed)
        data_args.image_column_name = "image"
    else:
        splits = load_image_splits(data_args, seed=seed)
    label_column = detect_label_column(splits["train"], data_args.label_column_name)
    return splits, label_column, id2label(splits["train"], label_column)


def scoring_batch(dataset, collator: ImageCollator, size: int) -> dict[str, torch.Tensor]:
    """The first `size` training examples with the eval transform: the fixed batch of Refill's activation criteria
    (identical on every process)."""
    examples = [dataset[i] for i in range(min(size, len(dataset)))] if hasattr(dataset, "__len__") else []
    if not examples:
        examples = list(dataset.take(size))
    return collator(examples)


class PruneRun:
    """The round loop: train under masks, evaluate, log, compute the next masks, rewind; shrink at the end."""

    def __init__(self, model, training_args: PruneTrainingArguments, train_dataset, eval_dataset, collator, batch):
        self.model = model
        self.args = training_args
        self.train_dataset, self.eval_dataset, self.collator = train_dataset, eval_dataset, collator
        self.batch = batch
        self.output_dir = training_args.output_dir
        self.num_classes = model.config.num_labels

    def round_dir(self, index: int) -> str:
        return os.path.join(self.output_dir, f"round_{index}")

    def make_callback(self, masks: RoundMasks | None):
        """The round's callback; it also computes the masks of a further round (saved, so a run can be extended)."""
        args = self.args
        cls = PRUNING_CALLBACKS[args.prune_method]
        kwargs = dict(masks=masks, rate=args.prune_rate, target_suffixes=args.prune_targets)
        if args.prune_method in ("refill", "rsst"):
            kwargs.update(fillback_rate=args.fillback_rate, criterion=args.criterion, scoring_batch=self.batch)
        if args.prune_method == "rsst":
            kwargs.update(
                reg_curve=args.reg_curve, reg_granularity=args.reg_granularity, reg_exponent=args.reg_exponent
            )
        return cls(**kwargs)

    def prepare_output_dir(self, resume: bool) -> int:
        """First round to run; refuses to mix runs unless resuming or overwriting."""
        done = read_rounds(self.output_dir)
        if done and not resume:
            if not self.args.overwrite_output_dir:
                raise FileExistsError(
                    f"{self.output_dir} holds {len(done)} finished rounds: pass --resume_from_checkpoint last to "
                    "continue, or --overwrite_output_dir true to start over."
                )
            if self.args.should_save:
                for name in [*ROUND_FILES.values(), "rewind.safetensors"]:
                    path = os.path.join(self.output_dir, name)
                    if os.path.isfile(path):
                        os.remove(path)
                for name in os.listdir(self.output_dir):
                    if name.startswith("round_") or name in ("final", "final_masked"):
                        shutil.rmtree(os.path.join(self.output_dir, name))
            done = []
        return len(done) if resume else 0

    def run(self, resume: bool = False) -> list[dict]:
        args = self.args
        start = self.prepare_output_dir(resume)
        rewind_state = load_rewind_state(self.output_dir) if resume else None
        if start > 0:
            if rewind_state is None:
                raise FileNotFoundError(f"{self.output_dir}/rewind.safetensors is missing: cannot continue the rounds.")
            masks = RoundMasks.from_state_dict(
                safetensors.torch.load_file(os.path.join(self.round_dir(start), MASKS_FILE))
            )
            rewind(self.model, rewind_state, masks.train)
        else:
            masks = None
            if args.rewind_step == 0 and args.rewind_epoch in (None, 0) and rewind_state is None:
                rewind_state = capture_state(self.model)
                if args.should_save:
                    save_rewind_state(rewind_state, self.output_dir)
        for index in range(start, args.prune_rounds):
            last = index == args.prune_rounds - 1
            callback = self.make_callback(masks)
            trainer = self.make_trainer(index, callback)
            capture = None
            if index == 0 and rewind_state is None:
                capture = RewindCaptureCallback(self.rewind_step(trainer), self.output_dir, args.should_save)
                trainer.add_callback(capture)
            checkpoint = last_complete_checkpoint(self.round_dir(index)) if resume else None
            train_result = trainer.train(resume_from_checkpoint=checkpoint)
            if capture is not None:
                rewind_state = capture.state if capture.state is not None else load_rewind_state(self.output_dir)
                if rewind_state is None:
                    raise RuntimeError(f"Round 0 ended before the rewind step {capture.step}; lower --rewind_step.")
            metrics = trainer.evaluate()
            row = self.round_row(index, callback, metrics, train_result.metrics)
            if last:
                row.update(self.save_final(trainer))
            masks = callback.next_masks
            if masks is not None:
                if args.should_save:
                    os.makedirs(self.round_dir(index + 1), exist_ok=True)
                    path = os.path.join(self.round_dir(index + 1), MASKS_FILE)
                    safetensors.torch.save_file(masks.state_dict(), path)
            if args.should_save:
                append_round(self.output_dir, row)
                self.log_wandb(row)
            trainer.accelerator.wait_for_everyone()
            logger.info("Round %d: %s", index, {k: v for k, v in row.items() if isinstance(v, (int, float))})
            if not last and masks is not None:
                rewind(self.model, rewind_state, masks.train)
        return read_rounds(self.output_dir)

    def rewind_step(self, trainer: PruneTrainer) -> int:
        """Optimizer steps of round 0 before the rewind point (`rewind_epoch` converted with the epoch length)."""
        if self.args.rewind_epoch is None:
            return self.args.rewind_step
        batches = len(trainer.get_train_dataloader())
        return self.args.rewind_epoch * math.ceil(batches / self.args.gradient_accumulation_steps)

    def make_trainer(self, index: int, callback) -> PruneTrainer:
        round_args = copy.deepcopy(self.args)
        round_args.output_dir = self.round_dir(index)
        round_args.overwrite_output_dir = True  # a round without a complete checkpoint restarts from its beginning
        if round_args.run_name:
            round_args.run_name = f"{round_args.run_name}-round{index}"
        return PruneTrainer(
            model=self.model,
            args=round_args,
            train_dataset=self.train_dataset,
            eval_dataset=self.eval_dataset,
            data_collator=self.collator,
            pruning=callback,
            num_classes=self.num_classes,
        )

    def round_row(self, index: int, callback, metrics: dict, train_metrics: dict) -> dict:
        row = {"round": index, "method": self.args.prune_method}
        row.update(pruning_stats(self.model, self.args.prune_targets))
        row.update({k: v for k, v in metrics.items() if k.startswith("eval_")})
        row["train_runtime"] = train_metrics.get("train_runtime")
        row["train_loss"] = train_metrics.get("train_loss")
        if getattr(callback, "current_lambda", None):
            row["rsst_lambda_last"] = callback.current_lambda
        return row

    def save_final(self, trainer: PruneTrainer) -> dict:
        """Save the masked model and its shrunk copy; check that the shrunk logits match on the scoring batch."""
        model = self.model.eval()
        small = shrink_model(model)
        device = next(model.parameters()).device
        pixels = self.batch["pixel_values"].to(device)
        with torch.no_grad():
            difference = (small(pixels).logits - model(pixels).logits).abs().max().item()
        if self.args.should_save:
            for name, final in (("final_masked", model), ("final", small)):
                final.save_pretrained(os.path.join(self.output_dir, name))
                image_processor(final.config).save_pretrained(os.path.join(self.output_dir, name))
        logger.info("Shrunk model saved to %s/final (max |logit difference| %.2e).", self.output_dir, difference)
        return {"shrink_max_logit_diff": difference}

    def log_wandb(self, row: dict) -> None:
        if "wandb" not in (self.args.report_to or []):
            return
        import wandb

        if wandb.run is not None:
            wandb.log({f"round/{k}": v for k, v in row.items() if isinstance(v, (int, float))})


def main(argv: Sequence[str] | None = None) -> list[dict]:
    model_args, data_args, training_args = parse_args(
        (PruneModelArguments, PruneDataArguments, PruneTrainingArguments), argv
    )
    setup_logging(training_args)
    if model_args.torch_num_threads is not None:
        torch.set_num_threads(model_args.torch_num_threads)
    if training_args.auto is not None:
        logger.info(
            "--auto %s is accepted for the seed launcher's users and ignored: nothing asks.", training_args.auto
        )
    set_seed(training_args.seed)
    splits, label_column, labels = load_data(data_args, training_args.seed)
    model = build_model(model_args, len(labels), labels, data_args.image_size)
    config: ViTVariantConfig = model.config
    train_transform, eval_transform = image_transforms(config.image_size, config.image_mean, config.image_std)
    image_column = data_args.image_column_name
    train = labeled_split(splits["train"], image_column, label_column, train_transform)
    validation = labeled_split(splits["validation"], image_column, label_column, eval_transform)
    collator = ImageCollator(data_args.max_bad_image_fraction)
    batch = scoring_batch(
        labeled_split(splits["train"], image_column, label_column, eval_transform),
        collator,
        training_args.per_device_train_batch_size,
    )
    save_run_config(training_args.output_dir, model_args, data_args, training_args)
    run = PruneRun(model, training_args, train, validation, collator, batch)
    return run.run(resume=training_args.resume_from_checkpoint is not None)


if __name__ == "__main__":
    main()
