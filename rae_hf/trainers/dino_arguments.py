"""Arguments of `run_dino_pretrain.py` beside `DinoTrainingArguments` (parsable by `HfArgumentParser`, from a recipe
YAML and/or the command line): the backbone and heads (`DinoModelArguments`) and the multi-crop views, masks,
monitoring and end-of-run probe (`MultiCropArguments`). The data arguments are `rae_hf.data.DataArguments`."""

from __future__ import annotations

from dataclasses import dataclass, field

from rae_hf.data import DataArguments
from rae_hf.data.multicrop import MultiCropSpec, multicrop_spec, preset_for_method
from rae_hf.models.dino.configuration_dino import DINO_BACKBONE_SIZES

__all__ = ["BACKBONE_TYPES", "DinoModelArguments", "MultiCropArguments"]

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
    backbone_size: str = field(
        default="small", metadata={"help": f"Fresh backbone size: {sorted(DINO_BACKBONE_SIZES)}."}
    )
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
    interpolate_offset: float | None = field(
        default=0.1,
        metadata={"help": "DINOv2 position-grid resize of the local crops: scale (grid + offset)/M as the DINOv2 "
                  "code; 0: transformers' exact-size resize."},
    )  # fmt: skip
    drop_path_mode: str = field(
        default="batch_subset",
        metadata={"help": "Student stochastic depth: batch_subset (DINOv2 code) or per_sample (transformers)."},
    )
    backbone_init: str = field(
        default="official",
        metadata={"help": "Fresh backbone init: official (DINOv2: CLS N(0, 1e-6), default conv) or backbone."},
    )

    def __post_init__(self):
        if self.backbone_type not in BACKBONE_TYPES:
            raise ValueError(f"--backbone_type {self.backbone_type!r} must be one of {BACKBONE_TYPES}.")
        if self.backbone_size not in DINO_BACKBONE_SIZES:
            raise ValueError(f"--backbone_size {self.backbone_size!r} must be one of {sorted(DINO_BACKBONE_SIZES)}.")

    def backbone_options(self) -> dict:
        """The keywords of `rae_hf.trainers.dino_setup.backbone_config` (a fresh backbone)."""
        names = ("hidden_size", "num_hidden_layers", "num_attention_heads", "mlp_ratio", "patch_size")
        names += ("num_register_tokens", "drop_path_rate", "layerscale_value")
        return {"backbone_type": self.backbone_type, "size": self.backbone_size} | {n: getattr(self, n) for n in names}

    def head_options(self) -> dict:
        """The `DinoConfig` fields: head sizes and the DINOv2-code forms of the backbone."""
        names = ("head_out_dim", "head_hidden_dim", "head_bottleneck_dim", "ibot_separate_head", "ibot_out_dim")
        names += ("interpolate_offset", "drop_path_mode", "backbone_init")
        return {name: getattr(self, name) for name in names}


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
        default=False,
        metadata={"help": "At the end probe the initial and the final backbone with kNN (run_probe.py --mode knn)."},
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

    def spec(self, method: str) -> MultiCropSpec:
        """The views of `method` (its preset unless --multicrop_preset), with the explicit overrides applied."""
        return multicrop_spec(
            self.multicrop_preset or preset_for_method(method),
            global_size=self.global_crop_size,
            local_size=self.local_crop_size,
            global_scale=self.global_crop_scale,
            local_scale=self.local_crop_scale,
            num_local_crops=self.num_local_crops,
            blur_bug=self.blur_bug or None,
        )
