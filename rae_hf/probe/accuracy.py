"""Top-1 / top-5 accuracy with torchmetrics (offline: no hub download as `evaluate.load("accuracy")` needs)."""

from __future__ import annotations

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

__all__ = ["accuracy_metrics", "topk_accuracy"]


def accuracy_metrics(num_classes: int, device: torch.device | str = "cpu") -> MetricCollection:
    """`top1` and `top5` micro accuracy over logits/scores `[N, num_classes]`.

    With 5 classes or fewer, `top5` is `top-num_classes`, i.e. 1.0 by definition.
    """
    if num_classes < 2:
        raise ValueError(f"Classification needs at least 2 classes, got {num_classes}.")
    return MetricCollection(
        {
            "top1": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
            "top5": MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro"),
        }
    ).to(device)


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, float]:
    """`{"top1", "top5"}` of scores `[N, num_classes]` against labels `[N]`."""
    metrics = accuracy_metrics(num_classes, scores.device)
    metrics.update(scores.float(), labels)
    return {name: float(value) for name, value in metrics.compute().items()}
