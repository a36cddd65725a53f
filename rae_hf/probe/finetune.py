"""Fine-tuning modes: LoRA adapters (peft) on the encoder's attention projections, or the whole encoder, both trained
with `transformers.Trainer` on a `ProbeClassifier`.

`ProbeTrainer` is the library's `RaeHfTrainer` (non-finite loss detection, images/s, skipped-image totals) plus one
override: the collator's `num_skipped` count is recorded instead of being passed to the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import EvalPrediction

from rae_hf.probe.accuracy import topk_accuracy
from rae_hf.probe.classifier import ProbeClassifier
from rae_hf.trainers.base import RaeHfTrainer

__all__ = ["ProbeTrainer", "apply_lora", "classification_metrics", "lora_target_modules", "unfreeze"]


# Query/value projection names, by preference: transformers 5 names them q_proj/v_proj in DINOv2, DINOv3, ViT,
# ViT-MAE, CLIP and SigLIP; older DINOv2/ViT implementations (and remote code) use query/value.
ATTENTION_PROJECTIONS = (("q_proj", "v_proj"), ("query", "value"))


def lora_target_modules(encoder: nn.Module) -> list[str]:
    """The attention query/value projections of `encoder`, found by name among its linear layers."""
    names = {name.rsplit(".", 1)[-1] for name, module in encoder.named_modules() if isinstance(module, nn.Linear)}
    for pair in ATTENTION_PROJECTIONS:
        if set(pair) <= names:
            return list(pair)
    raise ValueError(
        f"No attention projections named like {ATTENTION_PROJECTIONS} in the encoder (linear layers: {sorted(names)}); "
        "pass --lora_target_modules."
    )


def apply_lora(
    model: ProbeClassifier,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.1,
    target_modules: Sequence[str] | None = None,
) -> PeftModel:
    """Wrap `model` with LoRA adapters on its encoder's attention query/value projections (`lora_target_modules`,
    unless `target_modules` names others). Only the adapters and the classification head (a trainable copy,
    `modules_to_save`) are trained."""
    targets = list(target_modules or lora_target_modules(model.encoder.backbone))
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, modules_to_save=["classifier"]
    )
    return get_peft_model(model, config)


def unfreeze(model: ProbeClassifier) -> ProbeClassifier:
    """Full fine-tuning: every parameter (encoder and head) trainable."""
    model.requires_grad_(True)
    return model


def classification_metrics(prediction: EvalPrediction) -> dict[str, float]:
    """`Trainer.compute_metrics`: top-1/top-5 accuracy of the logits (torchmetrics, offline)."""
    logits = torch.as_tensor(prediction.predictions)
    labels = torch.as_tensor(prediction.label_ids)
    return topk_accuracy(logits, labels, num_classes=logits.shape[-1])


class ProbeTrainer(RaeHfTrainer):
    """`RaeHfTrainer` for image classifiers fed by `ImageCollator` batches."""

    def compute_loss(self, model, inputs: dict, return_outputs: bool = False, num_items_in_batch=None):
        skipped = inputs.pop("num_skipped", None)
        if model.training:
            self.record_images(inputs["pixel_values"].shape[0], skipped=skipped)
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
