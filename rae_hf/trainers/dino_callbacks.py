"""DINO's training callbacks: kNN accuracy of a backbone on a labelled split, and the crop picture.

`KnnMonitorCallback` extracts the L2-normalized CLS features of the (teacher) backbone on a labelled train and
evaluation loader and runs the probe's weighted kNN (`rae_hf.probe.knn`), every `every_steps` optimizer steps and
when training ends; the top-1 accuracy is logged as `knn_top1`. It runs on the main process only (no collectives).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from PIL import Image
from torch import nn
from torchvision.transforms import v2
from transformers import Trainer, TrainerCallback

from ..callbacks.image_evaluation import report_image
from ..probe.knn import knn_evaluate

__all__ = ["CropPictureCallback", "KnnMonitorCallback", "backbone_features"]


@torch.no_grad()
def backbone_features(
    backbone: nn.Module, loader: Iterable[dict], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """CLS features `[N, D]` (after the backbone's final norm) and labels `[N]` of every batch of `loader`."""
    was_training = backbone.training
    backbone.eval()
    features, labels = [], []
    for batch in loader:
        hidden = backbone(pixel_values=batch["pixel_values"].to(device)).last_hidden_state
        features.append(hidden[:, 0].float())
        labels.append(batch["labels"].to(device))
    backbone.train(was_training)
    return torch.cat(features), torch.cat(labels)


class KnnMonitorCallback(TrainerCallback):
    """Logs `knn_top1` (and `knn_top5`) of `backbone_of(model)` every `every_steps` steps (0: only at the end)."""

    def __init__(
        self,
        trainer: Trainer,
        train_loader: Iterable[dict],
        eval_loader: Iterable[dict],
        num_classes: int,
        backbone_of: Callable[[nn.Module], nn.Module],
        every_steps: int = 0,
        k: int = 20,
        temperature: float = 0.07,
    ):
        self.trainer = trainer
        self.train_loader, self.eval_loader = train_loader, eval_loader
        self.num_classes = num_classes
        self.backbone_of = backbone_of
        self.every_steps = every_steps
        self.k, self.temperature = k, temperature
        self.history: list[tuple[int, float]] = []

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """`{"knn_top1", "knn_top5"}` of the backbone on the evaluation loader."""
        backbone = self.backbone_of(model)
        device = next(backbone.parameters()).device
        train_features, train_labels = backbone_features(backbone, self.train_loader, device)
        eval_features, eval_labels = backbone_features(backbone, self.eval_loader, device)
        (result,) = knn_evaluate(
            train_features, train_labels, eval_features, eval_labels, self.num_classes, [self.k], self.temperature
        )
        return {"knn_top1": result["top1"], "knn_top5": result["top5"]}

    def _run(self, state, model: nn.Module) -> None:
        if not state.is_world_process_zero:
            return
        metrics = self.evaluate(self.trainer.accelerator.unwrap_model(model))
        self.history.append((state.global_step, metrics["knn_top1"]))
        self.trainer.log(metrics)

    def on_step_end(self, args, state, control, model: nn.Module | None = None, **kwargs):
        if self.every_steps and state.global_step % self.every_steps == 0 and state.global_step < state.max_steps:
            self._run(state, model)

    def on_train_end(self, args, state, control, model: nn.Module | None = None, **kwargs):
        self._run(state, model)


class CropPictureCallback(TrainerCallback):
    """Sends the picture of the training crops to W&B/TensorBoard when training starts."""

    def __init__(self, trainer: Trainer, picture: Image.Image):
        self.trainer = trainer
        self.picture = v2.functional.to_dtype(v2.functional.pil_to_tensor(picture), torch.float32, scale=True)

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            report_image(self.trainer, "train/crops", self.picture, state.global_step)
