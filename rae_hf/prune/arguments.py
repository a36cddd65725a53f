"""Command-line arguments of `run_prune.py` besides `PruneTrainingArguments`: the model to prune and its data."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..data import DataArguments

# Short names of the seed's datasets -> hub dataset, columns and split layout (seed: CIFAR-10 45k/5k, CIFAR-100 test
# set used for validation). `synthetic` generates shape images in memory (`rae_hf.tools.synthetic_shapes`).
DATASET_ALIASES: dict[str, dict] = {
    "cifar10": dict(dataset_name="uoft-cs/cifar10", image_column_name="img", label_column_name="label",
                    validation_split_name="validation", validation_fraction=0.1),
    "cifar100": dict(dataset_name="uoft-cs/cifar100", image_column_name="img", label_column_name="fine_label",
                     validation_split_name="test"),
    "imagenet": dict(dataset_name="ILSVRC/imagenet-1k", image_column_name="image", label_column_name="label",
                     validation_split_name="validation"),
}  # fmt: skip


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
