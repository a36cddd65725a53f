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
import sys
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from transformers import AutoConfig, AutoModel, set_seed

from rae_hf.callbacks.knn_monitor import CropPictureCallback, KnnMonitorCallback
from rae_hf.cli import parse_args, save_run_config, setup_logging
from rae_hf.data import DataArguments, ImageCollator, load_image_splits, load_rgb_image, with_image_transform
from rae_hf.data.multicrop import (
    MultiCropCollator,
    MultiCropSpec,
    MultiCropTransform,
    crop_picture,
    multicrop_spec,
    preset_for_method,
)
from rae_hf.models.dino import DinoConfig, DinoModel
from rae_hf.models.vit import ViTVariantConfig
from rae_hf.probe.data import check_labels, detect_label_column, id2label, labeled_split
from rae_hf.trainers.dino_config import DinoTrainingArguments
from rae_hf.trainers.dino_trainer import DinoTrainer

logger = logging.getLogger("rae_hf")

# ViT sizes (hidden, layers, heads); the MLP is mlp_ratio x hidden.
BACKBONE_SIZES = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "giant": (1536, 40, 24),
}
BACKBONE_TYPES = ("dinov2", "dinov2_with_registers", "vit", "vit_variant")


@dataclass
class DinoModelArguments:
    """The backbone (fresh of a given size, or pretrained to continue from) and the heads."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Continue from a DinoModel folder (a previous run) or start the student and teacher from a "
            "pretrained backbone (e.g. facebook/dinov2-small); None: a fresh backbone of --backbone_size."
        },
    )
    backbone_type: str = field(default="dinov2", metadata={"help": f"Fresh backbone type: {BACKBONE_TYPES}."})
    backbone_size: str = field(default="small", metadata={"help": f"Fresh backbone size: {sorted(BACKBONE_SIZES)}."})
    hidden_size: int | None = field(default=None, metadata={"help": "Override of the size's hidden width."})
    num_hidden_layers: int | None = field(default=None, metadata={"help": "Override of the size's depth."})
    num_attention_heads: int | None = field(default=None, metadata={"help": "Override of the size's heads."})
    mlp_ratio: float = field(default=4.0, metadata={"help": "MLP width / hidden width."})
    patch_size: int = field(default=16, metadata={"help": "Patch size of a fresh backbone."})
    num_register_tokens: int = field(default=4, metadata={"help": "Registers (dinov2_with_registers only)."})
    drop_path_rate: float = field(
        default=0.3,
        metadata={"help": "Student drop path: equal in every block (vit_variant: rising to it)."},
    )
    layerscale_value: float = field(default=1e-5, metadata={"help": "LayerScale init (DINOv2 training: 1e-5)."})
    head_out_dim: int = field(default=65536, metadata={"help": "DINO head prototypes."})
    head_hidden_dim: int = field(default=2048, metadata={"help": "DINO head MLP width."})
    head_bottleneck_dim: int = field(default=256, metadata={"help": "DINO head bottleneck."})
    ibot_separate_head: bool = field(default=False, metadata={"help": "A separate iBOT head (else shared)."})
    ibot_out_dim: int = field(default=65536, metadata={"help": "Prototypes of a separate iBOT head."})

    def __post_init__(self):
        if self.backbone_type not in BACKBONE_TYPES:
            raise ValueError(f"--backbone_type {self.backbone_type!r} must be one of {BACKBONE_TYPES}.")
        if self.backbone_size not in BACKBONE_SIZES:
            raise ValueError(f"--backbone_size {self.backbone_size!r} must be one of {sorted(BACKBONE_SIZES)}.")


@dataclass
class MultiCropArguments:
    """Multi-crop views, masks, monitoring and the end-of-run probe."""

    multicrop_preset: str | None = field(
        default=None,
        metadata={"help": "dinov2, dino, cifar or two_view; None: chosen from --method (DINO/DINOv2: multi-crop)."},
    )
    global_crop_size: int | None = field(default=None, metadata={"help": "Override of the preset's global size."})
    local_crop_size: int | None = field(default=None, metadata={"help": "Override of the preset's local size."})
    global_crop_scale: list[float] | None = field(default=None, metadata={"help": "Override, e.g. 0.32 1.0."})
    local_crop_scale: list[float] | None = field(default=None, metadata={"help": "Override, e.g. 0.05 0.32."})
    num_local_crops: int | None = field(
        default=None, metadata={"help": "Local crops (0-10; default 8): fewer when short of memory."}
    )
    blur_bug: bool = field(
        default=False, metadata={"help": "Blur with probability 1 - p as upstream DINOv2 code (released weights)."}
    )
    mask_ratio: list[float] = field(default_factory=lambda: [0.1, 0.5], metadata={"help": "iBOT mask ratio range."})
    mask_probability: float = field(default=0.5, metadata={"help": "Fraction of the global crops masked."})
    check_data_pipeline: bool = field(
        default=False, metadata={"help": "Print views, sizes, ranges and mask ratios of a few batches, then exit."}
    )
    check_batches: int = field(default=3, metadata={"help": "Batches inspected by --check_data_pipeline."})
    knn_train_dir: str | None = field(default=None, metadata={"help": "Labelled image folder: kNN memory bank."})
    knn_eval_dir: str | None = field(default=None, metadata={"help": "Labelled image folder: kNN queries."})
    knn_dataset_name: str | None = field(
        default=None,
        metadata={"help": "Labelled dataset (hub id or local path) for the kNN monitor, instead of the kNN folders."},
    )
    knn_train_split: str = field(default="train", metadata={"help": "Split of --knn_dataset_name: memory bank."})
    knn_eval_split: str = field(default="validation", metadata={"help": "Split of --knn_dataset_name: queries."})
    knn_image_column: str = field(default="image", metadata={"help": "Image column of --knn_dataset_name."})
    knn_label_column: str | None = field(
        default=None, metadata={"help": "Label column of --knn_dataset_name; None: detected as run_probe.py does."}
    )
    knn_max_images: int = field(
        default=2000, metadata={"help": "At most this many images per kNN split (a seeded random subset)."}
    )
    toy_data_dir: str | None = field(
        default=None,
        metadata={"help": "Generate the 2-class toy texture dataset here (train/, validation/) if absent."},
    )
    probe_before_after: bool = field(
        default=False, metadata={"help": "At the end run run_probe.py's kNN on the initial and the final backbone."}
    )

    def __post_init__(self):
        if (self.knn_train_dir is None) != (self.knn_eval_dir is None):
            raise ValueError("--knn_train_dir and --knn_eval_dir go together.")
        if self.knn_dataset_name is not None and self.knn_train_dir is not None:
            raise ValueError("Give either --knn_dataset_name or --knn_train_dir/--knn_eval_dir, not both.")
        if self.knn_max_images <= 0:
            raise ValueError(f"--knn_max_images must be positive, got {self.knn_max_images}.")
        if self.probe_before_after and not self.has_knn_data:
            raise ValueError("--probe_before_after needs --knn_train_dir/--knn_eval_dir or --knn_dataset_name.")

    @property
    def has_knn_data(self) -> bool:
        return self.knn_train_dir is not None or self.knn_dataset_name is not None

    def knn_data_arguments(self) -> DataArguments:
        """The labelled kNN splits as `DataArguments` ("train": memory bank, "validation": queries)."""
        if self.knn_dataset_name is not None:
            return DataArguments(
                dataset_name=self.knn_dataset_name,
                train_split_name=self.knn_train_split,
                validation_split_name=self.knn_eval_split,
                image_column_name=self.knn_image_column,
            )
        return DataArguments(train_dir=self.knn_train_dir, validation_dir=self.knn_eval_dir)


# ----- model -----------------------------------------------------------------------------------------------------
def backbone_config(args: DinoModelArguments, image_size: int):
    """A fresh backbone config of the requested type and size."""
    hidden, layers, heads = BACKBONE_SIZES[args.backbone_size]
    hidden, layers = args.hidden_size or hidden, args.num_hidden_layers or layers
    kwargs = dict(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=args.num_attention_heads or heads,
        intermediate_size=round(hidden * args.mlp_ratio),
        patch_size=args.patch_size,
        image_size=image_size,
    )
    if args.backbone_type.startswith("dinov2"):
        kwargs.update(drop_path_rate=args.drop_path_rate, layerscale_value=args.layerscale_value)
        if args.backbone_type == "dinov2_with_registers":
            kwargs["num_register_tokens"] = args.num_register_tokens
    if args.backbone_type == "vit_variant":
        return ViTVariantConfig(**kwargs, drop_path_rate=args.drop_path_rate, use_mask_token=True)
    return AutoConfig.for_model(args.backbone_type, **kwargs)


def build_model(args: DinoModelArguments, spec: MultiCropSpec, use_ibot: bool) -> DinoModel:
    """A fresh DinoModel, one continued from a DinoModel folder, or one whose student/teacher start pretrained."""
    heads = dict(
        head_out_dim=args.head_out_dim,
        head_hidden_dim=args.head_hidden_dim,
        head_bottleneck_dim=args.head_bottleneck_dim,
        use_ibot=use_ibot,
        ibot_separate_head=args.ibot_separate_head,
        ibot_out_dim=args.ibot_out_dim,
        image_size=spec.global_size,
        image_mean=list(spec.mean),
        image_std=list(spec.std),
    )
    if args.model_name_or_path is None:
        return DinoModel(DinoConfig(backbone_config=backbone_config(args, spec.global_size), **heads))
    config = AutoConfig.from_pretrained(args.model_name_or_path)
    if isinstance(config, DinoConfig):
        return DinoModel.from_pretrained(args.model_name_or_path)
    model = DinoModel(DinoConfig(backbone_config=config, **heads))
    pretrained = AutoModel.from_pretrained(args.model_name_or_path)
    for part in (model.student, model.teacher):
        missing, _ = part["backbone"].load_state_dict(pretrained.state_dict(), strict=False)
        if [name for name in missing if "mask_token" not in name]:
            raise ValueError(f"{args.model_name_or_path} lacks backbone weights {missing[:5]}.")
    return model


# ----- data ------------------------------------------------------------------------------------------------------
def crop_spec(args: MultiCropArguments, method: str) -> MultiCropSpec:
    return multicrop_spec(
        args.multicrop_preset or preset_for_method(method),
        global_size=args.global_crop_size,
        local_size=args.local_crop_size,
        global_scale=args.global_crop_scale,
        local_scale=args.local_crop_scale,
        num_local_crops=args.num_local_crops,
        blur_bug=args.blur_bug or None,
    )


def make_toy_textures(root: str, per_class: int = 160, validation_per_class: int = 100, size: int = 40) -> None:
    """Two grey-level texture classes as an image folder (`train/`, `validation/`): binary stripes and binary dot
    grids, each horizontal or vertical, of random frequency, phase, grey levels and polarity (seeded; written once).

    Everything that differs between images of a class is something the DINO augmentations change between the views
    of one image (brightness and contrast by the colour jitter, position and phase by the crops), so the texture is
    what the views share. Per-image colours are not: the colour jitter keeps most of them, DINO then matches views by
    colour, and a coloured version of this set stayed at chance (kNN 48% before, 51% after the quickstart).
    """
    if os.path.isdir(os.path.join(root, "validation")):
        return
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for split, count in (("train", per_class), ("validation", validation_per_class)):
        for label in ("stripes", "dots"):
            folder = os.path.join(root, split, label)
            os.makedirs(folder, exist_ok=True)
            for index in range(count):
                u, v = (xx, yy) if rng.random() < 0.5 else (yy, xx)
                frequency, phase = rng.uniform(3, 6), rng.uniform(0, 2 * np.pi, size=2)
                wave = np.sin(2 * np.pi * frequency * u + phase[0])
                if label == "stripes":
                    pattern = wave > 0
                else:
                    pattern = np.abs(wave * np.sin(2 * np.pi * frequency * v + phase[1])) > 0.5
                low, high = np.sort(rng.uniform(0, 1, size=2))
                if high - low < 0.3:
                    low, high = max(low - 0.15, 0.0), min(high + 0.15, 1.0)
                foreground, background = (high, low) if rng.random() < 0.5 else (low, high)
                pixels = np.where(pattern, foreground, background)[..., None].repeat(3, axis=-1)
                pixels = pixels + rng.normal(0, 0.03, pixels.shape)
                image = Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8))
                image.save(os.path.join(folder, f"{index:04d}.png"))


def _subset(split, max_images: int):
    """At most `max_images` examples: a seeded random subset of a map-style split, the first ones of a stream."""
    if hasattr(split, "__len__"):
        return split.shuffle(seed=0).select(range(max_images)) if len(split) > max_images else split
    return split.take(max_images)


def knn_loaders(args: MultiCropArguments, model: DinoModel, batch_size: int) -> tuple[DataLoader, DataLoader, int]:
    """Loaders of the labelled kNN splits (folders or a dataset) with the exported image processor's preprocessing,
    and the number of classes."""
    processor = model.image_processor()

    def transform(image: Image.Image) -> torch.Tensor:
        return processor(image, return_tensors="pt")["pixel_values"][0]

    data_args = args.knn_data_arguments()
    splits = load_image_splits(data_args)
    label_column = detect_label_column(splits["train"], args.knn_label_column)
    num_classes = len(id2label(splits["train"], label_column))
    loaders = []
    for name in ("train", "validation"):
        check_labels(splits[name], label_column, name, getattr(data_args, f"{name}_dir"))
        split = labeled_split(
            _subset(splits[name], args.knn_max_images), data_args.image_column_name, label_column, transform
        )
        loaders.append(DataLoader(split, batch_size=batch_size, collate_fn=ImageCollator()))
    return loaders[0], loaders[1], num_classes


def check_data_pipeline(loader: DataLoader, spec: MultiCropSpec, batches: int) -> bool:
    """Print the views of a few batches; False on NaN/Inf, a wrong number of views or wrong sizes."""
    ok = True
    for index, batch in enumerate(loader):
        if index >= batches:
            break
        images = batch["global_crops"].shape[0] // 2
        local = batch.get("local_crops")
        views = 2 + (0 if local is None else local.shape[0] // images)
        tensors = [batch["global_crops"]] + ([] if local is None else [local])
        finite = all(bool(torch.isfinite(t).all()) for t in tensors)
        sizes_ok = batch["global_crops"].shape[-1] == spec.global_size and (
            local is None or local.shape[-1] == spec.local_size
        )
        line = (
            f"batch {index}: {images} images, {views} views per image (expected {spec.num_views}): 2 global crops "
            f"{tuple(batch['global_crops'].shape[1:])}"
        )
        if local is not None:
            line += f", {views - 2} local crops {tuple(local.shape[1:])}"
        ranges = ", ".join(f"[{t.min():.2f}, {t.max():.2f}]" for t in tensors)
        line += f"; value ranges {ranges}; finite {finite}"
        if "masks" in batch:
            ratios = batch["masks"].float().mean(dim=1)
            masked = ratios[ratios > 0]
            if masked.numel():
                line += (
                    f"; masked crops {masked.numel()}/{ratios.numel()}, mask ratios "
                    f"[{masked.min():.2f}, {masked.max():.2f}]"
                )
        print(line)
        ok = ok and finite and views == spec.num_views and sizes_ok
    return ok


def save_crop_picture(
    split, image_column: str, transform: MultiCropTransform, path: str, count: int = 4
) -> Image.Image:
    """The views of the first `count` images as the model sees them, saved as a PNG."""
    views = []
    for example in split.take(count) if hasattr(split, "take") else [split[i] for i in range(count)]:
        views.append(transform(load_rgb_image(example[image_column]))["views"])
    picture = crop_picture(views, transform.spec.mean, transform.spec.std)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    picture.save(path)
    return picture


# ----- probe -----------------------------------------------------------------------------------------------------
def probe_knn(backbone_dir: str, args: MultiCropArguments, output_dir: str) -> float:
    """`run_probe.py --mode knn` on an exported backbone; the best top-1."""
    from rae_hf.scripts.run_probe import main as run_probe

    if args.knn_dataset_name is not None:
        data = ["--dataset_name", args.knn_dataset_name, "--train_split_name", args.knn_train_split]
        data += ["--validation_split_name", args.knn_eval_split, "--image_column_name", args.knn_image_column]
        data += ["--label_column_name", args.knn_label_column] if args.knn_label_column else []
    else:
        data = ["--train_dir", args.knn_train_dir, "--validation_dir", args.knn_eval_dir]
    results = run_probe(
        [
            "--model_name_or_path", backbone_dir,
            "--mode", "knn",
            "--pooling", "cls",
            *data,
            "--output_dir", output_dir,
            "--overwrite_output_dir", "true",
            "--report_to", "none",
            "--use_cpu", str(not torch.cuda.is_available()).lower(),
        ]
    )  # fmt: skip
    return max(entry["top1"] for entry in results["knn"])


# ----- main ------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    model_args, crop_args, data_args, training_args = parse_args(
        (DinoModelArguments, MultiCropArguments, DataArguments, DinoTrainingArguments), argv
    )
    setup_logging(training_args)
    set_seed(training_args.seed)
    if crop_args.toy_data_dir:
        make_toy_textures(crop_args.toy_data_dir)
    spec = crop_spec(crop_args, training_args.method)
    model = build_model(model_args, spec, training_args.use_ibot)
    if spec.global_size % model.config.patch_size:
        raise ValueError(
            f"global crop size {spec.global_size} must be a multiple of the patch {model.config.patch_size}."
        )
    transform = MultiCropTransform(spec)
    splits = load_image_splits(data_args, seed=training_args.seed)
    train = with_image_transform(splits["train"], transform, data_args.image_column_name)
    grid = spec.global_size // model.config.patch_size if training_args.use_ibot else None
    collator = MultiCropCollator(
        grid, tuple(crop_args.mask_ratio), crop_args.mask_probability, data_args.max_bad_image_fraction
    )
    picture_path = os.path.join(training_args.output_dir, "crops.png")

    if crop_args.check_data_pipeline:
        print(f"Multi-crop {spec}: {spec.num_views} views per image")
        loader = DataLoader(train, batch_size=training_args.per_device_train_batch_size, collate_fn=collator)
        ok = check_data_pipeline(loader, spec, crop_args.check_batches)
        save_crop_picture(splits["train"], data_args.image_column_name, transform, picture_path)
        print(f"Crop picture: {picture_path}. Data pipeline check {'passed' if ok else 'FAILED'}.")
        if not ok:
            sys.exit(1)
        return {"check_passed": True}

    trainer = DinoTrainer(model=model, args=training_args, train_dataset=train, data_collator=collator)
    if training_args.should_save:
        save_run_config(training_args.output_dir, model_args, crop_args, data_args, training_args)
        picture = save_crop_picture(splits["train"], data_args.image_column_name, transform, picture_path)
        trainer.add_callback(CropPictureCallback(trainer, picture))
    if crop_args.has_knn_data:
        train_loader, eval_loader, num_classes = knn_loaders(crop_args, model, training_args.per_device_eval_batch_size)
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
    initial_dir = os.path.join(training_args.output_dir, "backbone_init")
    if crop_args.probe_before_after and training_args.should_save and not training_args.resume_from_checkpoint:
        model.save_backbone(initial_dir)
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    metrics = dict(result.metrics)
    backbone_dir = os.path.join(training_args.output_dir, "backbone")
    trainer.save_model()
    if training_args.should_save:
        model.save_backbone(backbone_dir)
        trainer.create_model_card(dataset=data_args.dataset_name or data_args.train_dir)
        logger.info("Teacher backbone exported to %s (AutoModel.from_pretrained).", backbone_dir)
    if crop_args.probe_before_after and training_args.should_save:
        probe_dir = os.path.join(training_args.output_dir, "probe")
        if os.path.isdir(initial_dir):
            metrics["knn_top1_before"] = probe_knn(initial_dir, crop_args, os.path.join(probe_dir, "before"))
        metrics["knn_top1_after"] = probe_knn(backbone_dir, crop_args, os.path.join(probe_dir, "after"))
        before = metrics.get("knn_top1_before", math.nan)
        print(
            f"run_probe kNN top-1 of the teacher backbone: before pretraining {100 * before:.1f}%, "
            f"after {100 * metrics['knn_top1_after']:.1f}%"
        )
    return metrics
