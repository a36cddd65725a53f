"""Arguments of `run_probe.py` (parsable by `HfArgumentParser`, from a recipe YAML and/or the command line).

`ProbeArguments`: which encoder, which mode, which features and where they are cached. `ProbeTrainingArguments`:
`TrainingArguments` (output_dir, seed, epochs, batch sizes, report_to, ...) plus the linear-head grid and kNN settings.
In `linear` mode the heads follow their own optimizer and cosine schedule (`head_*`, `learning_rates`), using
`num_train_epochs`/`max_steps`, `per_device_train_batch_size` (heads) and `per_device_eval_batch_size` (feature
extraction) from `TrainingArguments`; `lora`/`full` modes are ordinary `Trainer` runs with `learning_rate` etc.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from transformers import TrainingArguments

from rae_hf.probe.features import POOLINGS
from rae_hf.probe.heads import DINOV2_LEARNING_RATES
from rae_hf.probe.knn import DEFAULT_KS

__all__ = ["ProbeArguments", "ProbeTrainingArguments"]


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


@dataclass
class ProbeTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the linear-head grid (DINOv2 defaults) and kNN settings."""

    learning_rates: list[float] = field(
        default_factory=lambda: list(DINOV2_LEARNING_RATES),
        metadata={"help": "Base learning rates of the head grid (x batch/256 unless --scale_lr_by_batch false)."},
    )
    head_optimizer: Literal["sgd", "lars", "adamw"] = field(
        default="sgd", metadata={"help": "Head optimizer: sgd (momentum; DINOv2), lars (MAE) or adamw."}
    )
    head_momentum: float = field(default=0.9, metadata={"help": "Momentum of sgd/lars."})
    head_norm: Literal["none", "batchnorm"] = field(
        default="none", metadata={"help": "batchnorm: BatchNorm1d(affine=False, eps=1e-6) before each head (MAE)."}
    )
    head_init: Literal["normal", "trunc_normal"] = field(
        default="normal", metadata={"help": "Head weight init: normal (DINOv2) or trunc_normal (MAE), std 0.01."}
    )
    head_init_std: float = field(default=0.01, metadata={"help": "Std of the head weight init."})
    head_warmup_epochs: float = field(default=0.0, metadata={"help": "Linear warmup of the heads (MAE: 10 of 90)."})
    scale_lr_by_batch: bool = field(
        default=True, metadata={"help": "Use base lr x batch_size / 256 (DINOv2/MAE linear scaling rule)."}
    )
    knn_k: list[int] = field(
        default_factory=lambda: list(DEFAULT_KS), metadata={"help": "kNN neighbour counts (clipped to train size)."}
    )
    knn_temperature: float = field(default=0.07, metadata={"help": "kNN vote temperature: weight exp(sim / T)."})
    run_knn: bool = field(default=True, metadata={"help": "linear mode: also report kNN on the same features."})
    num_train_epochs: float = field(default=10.0, metadata={"help": "Epochs (linear: of the heads; DINOv2: 10)."})
    per_device_train_batch_size: int = field(
        default=256, metadata={"help": "Batch size (linear: of the heads; lower it for lora/full)."}
    )
    per_device_eval_batch_size: int = field(
        default=64, metadata={"help": "Batch size of feature extraction and evaluation."}
    )
    remove_unused_columns: bool = field(default=False, metadata={"help": "Images arrive as `pixel_values`."})
    logging_nan_inf_filter: bool = field(
        default=False, metadata={"help": "Keep False: a NaN/inf loss must stop the run, not be averaged away."}
    )

    def __post_init__(self):
        if self.label_names is None:
            self.label_names = ["labels"]
        if self.accelerator_config is None:  # streamed data: every process reads its own batches
            self.accelerator_config = {"dispatch_batches": False}
        super().__post_init__()
        if not self.learning_rates or min(self.learning_rates) <= 0:
            raise ValueError(f"--learning_rates must be positive, got {self.learning_rates}.")
        if len(set(self.learning_rates)) != len(self.learning_rates):
            raise ValueError(f"--learning_rates has duplicates: {self.learning_rates}.")
        if not self.knn_k or min(self.knn_k) < 1 or self.knn_temperature <= 0:
            raise ValueError(f"Invalid kNN settings k={self.knn_k}, temperature={self.knn_temperature}.")
        if not 0 <= self.head_momentum < 1 or self.head_init_std <= 0 or self.head_warmup_epochs < 0:
            raise ValueError("Need 0 <= --head_momentum < 1, --head_init_std > 0 and --head_warmup_epochs >= 0.")
