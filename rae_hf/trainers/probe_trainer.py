"""`ProbeTrainer`: LoRA or full fine-tuning of a `ProbeClassifier` (`run_probe --mode lora|full`).

The shared `BaseTrainer` (non-finite loss detection, images/s, exact resume, atomic checkpoints) plus: the collator's
`num_skipped` count is recorded instead of being passed to the model; the optimizer gets per-group learning rates
(a faster new head, layer-wise decay down the backbone: `rae_hf.probe.finetune.finetune_param_groups`); every
training step's loss is kept on the device so the run can say whether it converged (`loss_drop_last_tenth`).
"""

from __future__ import annotations

import torch
from transformers import Trainer

from ..probe.diagnostics import loss_drop_last_tenth
from ..probe.finetune import finetune_param_groups
from .base_trainer import BaseTrainer

__all__ = ["ProbeTrainer"]


class ProbeTrainer(BaseTrainer):
    """`BaseTrainer` for image classifiers fed by `ImageCollator` batches (see the module doc)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._step_losses: list[torch.Tensor] = []

    def compute_loss(self, model, inputs: dict, return_outputs: bool = False, num_items_in_batch=None):
        skipped = inputs.pop("num_skipped", None)
        if model.training:
            self.record_images(inputs["pixel_values"].shape[0], skipped=skipped)
        result = super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )
        if model.training:
            loss = result[0] if return_outputs else result
            self._step_losses.append(loss.detach().float().reshape(()))
        return result

    def create_optimizer(self, model=None):
        """Trainer's optimizer class and settings (AdamW by default) over `finetune_param_groups`."""
        if self.optimizer is None:
            model = model if model is not None else self.model
            args = self.args
            groups = finetune_param_groups(
                model,
                args.learning_rate,
                args.weight_decay,
                getattr(args, "head_lr_multiplier", None) or 1.0,
                getattr(args, "layer_decay", None) or 1.0,
            )
            optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
            optimizer_kwargs.pop("lr", None)
            self.optimizer = optimizer_cls(groups, lr=args.learning_rate, **optimizer_kwargs)
        return self.optimizer

    def loss_drop_last_tenth(self) -> float | None:
        """Relative fall of the training loss over the last tenth of the steps of this run (None under 20 steps)."""
        if len(self._step_losses) < 20:
            return None
        return loss_drop_last_tenth(torch.stack(self._step_losses)[:, None])[0].item()
