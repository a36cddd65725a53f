"""`PruneTrainer`: one pruning round = one `Trainer.train()` of a classifier under the round's masks.

The round's `PruningCallback` enforces the masks (and RSST's penalty) and is a registered state: its masks are
saved in every checkpoint as `prune_masks.safetensors` and restored on resume, so a round continues exactly from
any step. Evaluation reports top-1 / top-5 accuracy (`eval_top1`, `eval_top5`) accumulated batch by batch.
"""

from __future__ import annotations

import torch
from transformers import EvalPrediction

from ..probe.accuracy import accuracy_metrics
from ..prune.callbacks import PruningCallback, RSSTCallback
from .base_trainer import BaseTrainer
from .prune_config import PruneTrainingArguments


class AccuracyMetrics:
    """`compute_metrics` for `batch_eval_metrics=True`: top-1 / top-5 over the whole evaluation split."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.metrics = None

    def __call__(self, prediction: EvalPrediction, compute_result: bool) -> dict[str, float] | None:
        logits, labels = prediction.predictions, prediction.label_ids
        logits = logits[0] if isinstance(logits, (tuple, list)) else logits
        if self.metrics is None:
            self.metrics = accuracy_metrics(self.num_classes, logits.device)
        self.metrics.update(logits.float(), labels)
        if not compute_result:
            return None
        values = {name: float(value) for name, value in self.metrics.compute().items()}
        self.metrics.reset()
        return values


class PruneTrainer(BaseTrainer):
    """Trains a classifier under a `PruningCallback` (added and checkpointed here)."""

    args: PruneTrainingArguments

    def __init__(self, *args, pruning: PruningCallback | None = None, num_classes: int | None = None, **kwargs):
        if num_classes is not None and kwargs.get("compute_metrics") is None:
            kwargs["compute_metrics"] = AccuracyMetrics(num_classes)
        super().__init__(*args, **kwargs)
        self.pruning = pruning or PruningCallback()
        self.add_callback(self.pruning)
        self.register_state("prune_masks", self.pruning)

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        self.record_images(inputs["pixel_values"].shape[0], inputs.get("num_skipped"))
        if isinstance(self.pruning, RSSTCallback):
            self.record_metrics(rsst_lambda=self.pruning.current_lambda)
        return super().training_step(model, inputs, num_items_in_batch)
