"""What `run_dino_pretrain.py` builds around `DinoTrainer`, as functions of plain values: the backbone config of a
size, the `DinoModel` (fresh, continued, or started from a pretrained backbone), the kNN monitor's loaders and the
kNN probe of an exported backbone (`rae_hf.probe.runner`, as `run_probe.py --mode knn` runs it)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader
from transformers import AutoConfig, AutoModel, PreTrainedConfig

from ..data import DataArguments, ImageCollator, load_image_splits
from ..data.multicrop import MultiCropSpec
from ..models.dino import DinoConfig, DinoModel
from ..models.dino.configuration_dino import DINO_BACKBONE_SIZES
from ..models.presets import apply_preset
from ..models.vit import ViTVariantConfig
from ..probe import feature_variants, load_encoder
from ..probe.data import check_labels, detect_label_column, id2label, labeled_split
from ..probe.report import write_results
from ..probe.runner import FeatureOptions, frozen_probe, load_labeled_splits
from .probe_config import ProbeTrainingArguments

__all__ = ["backbone_config", "build_dino_model", "knn_loaders", "probe_knn"]


def backbone_config(
    backbone_type: str,
    size: str,
    image_size: int,
    *,
    hidden_size: int | None = None,
    num_hidden_layers: int | None = None,
    num_attention_heads: int | None = None,
    mlp_ratio: float = 4.0,
    patch_size: int = 16,
    num_register_tokens: int = 4,
    drop_path_rate: float = 0.3,
    layerscale_value: float = 1e-5,
) -> PreTrainedConfig:
    """A fresh backbone config of `backbone_type` at `size` (`DINO_BACKBONE_SIZES`; explicit sizes win) with an MLP
    of `mlp_ratio` x the width."""
    sizes = SimpleNamespace(
        hidden_size=hidden_size, num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads
    )
    apply_preset(sizes, DINO_BACKBONE_SIZES, size, "--backbone_size")
    kwargs: dict[str, Any] = dict(
        hidden_size=sizes.hidden_size,
        num_hidden_layers=sizes.num_hidden_layers,
        num_attention_heads=sizes.num_attention_heads,
        intermediate_size=round(sizes.hidden_size * mlp_ratio),  # the ratio, also of an overridden width
        patch_size=patch_size,
        image_size=image_size,
    )
    if backbone_type.startswith("dinov2"):
        kwargs.update(drop_path_rate=drop_path_rate, layerscale_value=layerscale_value)
        if backbone_type == "dinov2_with_registers":
            kwargs["num_register_tokens"] = num_register_tokens
    if backbone_type == "vit_variant":
        return ViTVariantConfig(**kwargs, drop_path_rate=drop_path_rate, use_mask_token=True)
    return AutoConfig.for_model(backbone_type, **kwargs)


def build_dino_model(
    spec: MultiCropSpec,
    use_ibot: bool,
    model_name_or_path: str | None = None,
    backbone: dict[str, Any] | None = None,
    heads: dict[str, Any] | None = None,
) -> DinoModel:
    """A fresh DinoModel (`backbone`: `backbone_config` keywords), one continued from a DinoModel folder, or one whose
    student and teacher start from a pretrained backbone; `heads`: `DinoConfig` head sizes."""
    config = dict(
        **(heads or {}),
        use_ibot=use_ibot,
        image_size=spec.global_size,
        image_mean=list(spec.mean),
        image_std=list(spec.std),
    )
    if model_name_or_path is None:
        fresh = backbone_config(image_size=spec.global_size, **(backbone or {}))
        return DinoModel(DinoConfig(backbone_config=fresh, **config))
    pretrained_config = AutoConfig.from_pretrained(model_name_or_path)
    if isinstance(pretrained_config, DinoConfig):
        return DinoModel.from_pretrained(model_name_or_path)
    model = DinoModel(DinoConfig(backbone_config=pretrained_config, **config))
    pretrained = AutoModel.from_pretrained(model_name_or_path)
    for part in (model.student, model.teacher):
        missing, _ = part["backbone"].load_state_dict(pretrained.state_dict(), strict=False)
        if [name for name in missing if "mask_token" not in name]:
            raise ValueError(f"{model_name_or_path} lacks backbone weights {missing[:5]}.")
    return model


def _subset(split, max_images: int):
    """At most `max_images` examples: a seeded random subset of a map-style split, the first ones of a stream."""
    if hasattr(split, "__len__"):
        return split.shuffle(seed=0).select(range(max_images)) if len(split) > max_images else split
    return split.take(max_images)


def knn_loaders(
    data_args: DataArguments, label_column: str | None, max_images: int, model: DinoModel, batch_size: int
) -> tuple[DataLoader, DataLoader, int]:
    """Loaders of the labelled kNN splits of `data_args` ("train": memory bank, "validation": queries; at most
    `max_images` each) with the exported image processor's preprocessing, and the number of classes."""
    processor = model.image_processor()

    def transform(image: Image.Image) -> torch.Tensor:
        return processor(image, return_tensors="pt")["pixel_values"][0]

    splits = load_image_splits(data_args)
    column = detect_label_column(splits["train"], label_column)
    num_classes = len(id2label(splits["train"], column))
    loaders = []
    for name in ("train", "validation"):
        check_labels(splits[name], column, name, getattr(data_args, f"{name}_dir"))
        split = labeled_split(_subset(splits[name], max_images), data_args.image_column_name, column, transform)
        loaders.append(DataLoader(split, batch_size=batch_size, collate_fn=ImageCollator()))
    return loaders[0], loaders[1], num_classes


def probe_knn(backbone_dir: str, data_args: DataArguments, label_column: str | None, output_dir: str) -> float:
    """The probe's kNN (CLS features, its default k and temperature) of the backbone in `backbone_dir` on the
    labelled splits of `data_args`; writes `probe_results.json`/`.md` to `output_dir` and returns the best top-1."""
    args = ProbeTrainingArguments(output_dir=output_dir, report_to="none", use_cpu=not torch.cuda.is_available())
    args.resolve_defaults("knn")
    encoder = load_encoder(backbone_dir, image_size=data_args.image_size)
    splits, column = load_labeled_splits(data_args, args.seed, label_column)
    options = FeatureOptions.for_data(
        data_args, batch_size=args.per_device_eval_batch_size, num_workers=args.dataloader_num_workers, seed=args.seed
    )
    variants = feature_variants(["cls"], [4], "no")
    results, _ = frozen_probe(encoder, splits, column, variants, "knn", options, args)
    write_results(output_dir, results)
    return max(entry["top1"] for entry in results["knn"])
