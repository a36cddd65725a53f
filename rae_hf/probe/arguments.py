"""Arguments of `run_probe.py` (parsable by `HfArgumentParser`, from a recipe YAML and/or the command line).

`ProbeArguments`: which encoder, which mode, which features and where they are cached. The protocol, the head
solver, kNN and fine-tuning settings are `rae_hf.trainers.probe_config.ProbeTrainingArguments` (trainers import the
probe package, never the other way round).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rae_hf.probe.features import POOLINGS

__all__ = ["ProbeArguments"]


@dataclass
class ProbeArguments:
    """Encoder, evaluation mode and features."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Encoder to probe: an HF vision model id or path (DINOv2 +/- registers, DINOv3, SigLIP(2), CLIP, "
            "ViT, ViT-MAE; composite checkpoints give their vision tower) or an RAE checkpoint (its encoder)."
        },
    )
    encoder_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "Alias of --model_name_or_path (seed framework), e.g. a trained RAE folder; takes precedence, "
            "so it overrides a recipe's encoder."
        },
    )
    mode: Literal["linear", "knn", "lora", "full"] = field(
        default="linear",
        metadata={
            "help": "linear: grid of linear heads on cached frozen features (+ kNN); knn: kNN only; lora: LoRA "
            "adapters + head with Trainer; full: full fine-tuning with Trainer."
        },
    )
    pooling: list[str] = field(
        default_factory=lambda: ["cls"],
        metadata={
            "help": f"Feature variants, one or more of {POOLINGS}: cls token, mean of patch tokens, both "
            "concatenated, CLS of the last n blocks (see --n_last_blocks/--last_n_avgpool), the encoder latent "
            "(RAE-normalized when it has statistics) flattened or averaged over positions. lora/full use the first."
        },
    )
    n_last_blocks: list[int] = field(
        default_factory=lambda: [4], metadata={"help": "Values of n for --pooling last_n (DINOv2: 1 4)."}
    )
    last_n_avgpool: Literal["no", "yes", "both"] = field(
        default="no", metadata={"help": "Append the last block's patch-token mean to last_n features (DINOv2: both)."}
    )
    label_column_name: str | None = field(
        default=None, metadata={"help": "Label column; default: label, labels, fine_label, ... or the ClassLabel one."}
    )
    feature_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Store extracted features here (datasets Arrow) and reuse them; default: in memory only."},
    )
    verify_feature_cache: bool = field(
        default=True,
        metadata={"help": "Check the SHA-256 of every cached feature file before reusing it (sizes: always)."},
    )
    feature_dtype: Literal["float16", "float32"] = field(
        default="float16", metadata={"help": "Storage dtype of the features (heads always compute in float32)."}
    )
    extraction_precision: Literal["auto", "bf16", "fp32"] = field(
        default="auto", metadata={"help": "Encoder precision for extraction; auto: bf16 autocast on CUDA with bf16."}
    )
    crop_pct: float = field(
        default=0.875,
        metadata={"help": "Evaluation crop: resize the shorter side to image_size / crop_pct, then center crop."},
    )
    train_augment_passes: int = field(
        default=0,
        metadata={
            "help": "0: train features from the evaluation transform (one pass). N > 0: N cached passes with "
            "RandomResizedCrop + flip, concatenated (N x the memory)."
        },
    )
    save_classifier: bool = field(
        default=True,
        metadata={"help": "linear: save the best head with its encoder as a ProbeClassifier in output_dir."},
    )
    quickstart_assets: str | None = field(
        default=None,
        metadata={
            "help": "Folder of the offline quickstart's inputs: the tiny encoder and synthetic images the recipe "
            "names are made there on first use (e.g. runs/quickstart)."
        },
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.1, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "Modules LoRA adapts; default per architecture (query/value, q_proj/v_proj)."}
    )

    def __post_init__(self) -> None:
        """Resolve the encoder alias and reject inconsistent values."""
        encoder = self.encoder_checkpoint or self.model_name_or_path
        if encoder is None:
            raise ValueError("Give the encoder with --model_name_or_path (or its alias --encoder_checkpoint).")
        self.model_name_or_path = self.encoder_checkpoint = encoder
        unknown = [name for name in self.pooling if name not in POOLINGS]
        if unknown or not self.pooling:
            raise ValueError(f"--pooling must be one or more of {POOLINGS}, got {self.pooling}.")
        if not self.n_last_blocks or min(self.n_last_blocks) < 1:
            raise ValueError(f"--n_last_blocks must be positive, got {self.n_last_blocks}.")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"--crop_pct must be in (0, 1], got {self.crop_pct}.")
        if self.train_augment_passes < 0:
            raise ValueError(f"--train_augment_passes must be >= 0, got {self.train_augment_passes}.")
        if self.lora_r < 1 or not 0 <= self.lora_dropout < 1:
            raise ValueError(f"Invalid LoRA settings r={self.lora_r}, dropout={self.lora_dropout}.")
