"""`DinoTrainingArguments`: DINO/DINOv2 losses and schedules on top of the shared base arguments.

Defaults follow DINOv2's training code (facebookresearch/dinov2, `ssl_default_config.yaml`), with schedule lengths in
epochs of `epoch_length` optimizer steps (DINOv2 counts 1250 iterations per "epoch"; `None` means a real pass over
the data). `learning_rate` is the base rate before the batch-size scaling (`lr_scaling`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .base_config import BaseTrainingArguments

DINO_METHODS = ("dinov2", "dino")
CENTERINGS = ("softmax", "sinkhorn_knopp")
LR_SCALINGS = ("sqrt", "linear", "none")


@dataclass
class DinoTrainingArguments(BaseTrainingArguments):
    """`BaseTrainingArguments` plus the self-distillation losses, the teacher EMA and the DINO schedules."""

    method: str = field(
        default="dinov2",
        metadata={"help": "'dinov2': DINO + iBOT + KoLeo losses on multi-crop; 'dino': DINO v1 (DINO loss only)."},
    )
    learning_rate: float = field(
        default=0.004, metadata={"help": "Base lr, scaled by lr_scaling (DINOv2: 0.004 x sqrt(batch / 1024))."}
    )
    lr_scaling: str = field(
        default="sqrt",
        metadata={"help": "'sqrt': x sqrt(total batch / 1024) (DINOv2); 'linear': x total batch / 256 (DINO v1)."},
    )
    min_lr: float = field(default=1e-6, metadata={"help": "Final lr of the cosine schedule."})
    warmup_epochs: float = field(default=10.0, metadata={"help": "Linear lr warm-up from 0, in epochs."})
    weight_decay: float = field(default=0.04, metadata={"help": "Weight decay at the start (cosine to the end value)."})
    weight_decay_end: float = field(default=0.4, metadata={"help": "Weight decay at the end of training."})
    layerwise_decay: float = field(
        default=0.9, metadata={"help": "Layer-wise lr decay d: block i gets d^(L - i) x lr, embeddings d^(L + 1)."}
    )
    patch_embed_lr_mult: float = field(default=0.2, metadata={"help": "Extra lr factor of the patch embedding."})
    freeze_last_layer_epochs: float = field(
        default=1.0, metadata={"help": "The heads' last layer (prototypes) gets lr 0 for this many epochs."}
    )
    max_grad_norm: float = field(default=3.0, metadata={"help": "Gradient clipping norm; 0 disables it."})
    clip_grad_per_module: bool = field(
        default=True, metadata={"help": "Clip the backbone and each head apart (DINOv2) instead of all at once."}
    )
    epoch_length: int | None = field(
        default=None, metadata={"help": "Optimizer steps per schedule epoch (DINOv2: 1250); None: one data pass."}
    )
    teacher_momentum: float = field(default=0.992, metadata={"help": "Teacher EMA momentum at the start."})
    teacher_momentum_end: float = field(default=1.0, metadata={"help": "Teacher EMA momentum at the end (cosine)."})
    student_temperature: float = field(default=0.1, metadata={"help": "Student softmax temperature."})
    teacher_temperature: float = field(default=0.07, metadata={"help": "Teacher temperature after the warm-up."})
    warmup_teacher_temperature: float = field(default=0.04, metadata={"help": "Teacher temperature at the start."})
    warmup_teacher_temperature_epochs: float = field(
        default=30.0, metadata={"help": "Linear teacher-temperature warm-up, in epochs."}
    )
    centering: str = field(
        default="softmax",
        metadata={"help": "Teacher targets: 'softmax' centring (momentum center_momentum) or 'sinkhorn_knopp'."},
    )
    center_momentum: float = field(default=0.9, metadata={"help": "Momentum of the teacher centres."})
    sinkhorn_iterations: int = field(default=3, metadata={"help": "Sinkhorn-Knopp iterations."})
    dino_loss_weight: float = field(default=1.0, metadata={"help": "Weight of the DINO (CLS) loss."})
    ibot_loss_weight: float = field(default=1.0, metadata={"help": "Weight of the iBOT masked-patch loss."})
    koleo_loss_weight: float = field(default=0.1, metadata={"help": "Weight of KoLeo (per global crop, summed)."})
    knn_steps: int = field(default=0, metadata={"help": "kNN accuracy of the teacher every N steps (0: at the end)."})
    knn_k: int = field(default=20, metadata={"help": "Neighbours of the monitoring kNN classifier."})

    def __post_init__(self):
        super().__post_init__()
        choices = {"method": DINO_METHODS, "centering": CENTERINGS, "lr_scaling": LR_SCALINGS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} must be one of {allowed}.")
        for name in ("student_temperature", "teacher_temperature", "warmup_teacher_temperature"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be positive.")
        for name in ("teacher_momentum", "teacher_momentum_end", "layerwise_decay"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name}={getattr(self, name)} must be in (0, 1].")
        if not 0 <= self.center_momentum < 1:
            raise ValueError(f"center_momentum={self.center_momentum} must be in [0, 1).")
        names = ("warmup_epochs", "freeze_last_layer_epochs", "warmup_teacher_temperature_epochs", "weight_decay_end")
        names += ("patch_embed_lr_mult", "dino_loss_weight", "ibot_loss_weight", "koleo_loss_weight", "knn_steps")
        for name in names:
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0.")
        if self.epoch_length is not None and self.epoch_length < 1:
            raise ValueError(f"epoch_length={self.epoch_length} must be >= 1 (or null for one pass over the data).")
        if self.sinkhorn_iterations < 1:
            raise ValueError(f"sinkhorn_iterations={self.sinkhorn_iterations} must be >= 1.")
        if self.knn_k < 1:
            raise ValueError(f"knn_k={self.knn_k} must be >= 1.")

    @property
    def use_ibot(self) -> bool:
        return self.method == "dinov2" and self.ibot_loss_weight > 0

    @property
    def use_koleo(self) -> bool:
        return self.method == "dinov2" and self.koleo_loss_weight > 0

    def scaled_learning_rate(self, total_batch_size: int) -> float:
        """Peak lr: `learning_rate` times the batch-size factor of `lr_scaling`."""
        if self.lr_scaling == "sqrt":
            return self.learning_rate * (total_batch_size / 1024) ** 0.5
        if self.lr_scaling == "linear":
            return self.learning_rate * total_batch_size / 256
        return self.learning_rate
