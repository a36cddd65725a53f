"""Weighted k-nearest-neighbour classification on frozen features (DINO protocol).

Features are L2-normalized; each query's k most cosine-similar training examples vote for their class with weight
`exp(similarity / T)` (T = 0.07); scores are the per-class sums. k runs over {10, 20, 100, 200} by default, each
clipped to the number of training examples.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from rae_hf.probe.accuracy import topk_accuracy

__all__ = ["DEFAULT_KS", "knn_evaluate", "knn_scores"]

DEFAULT_KS = (10, 20, 100, 200)


@torch.no_grad()
def knn_scores(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    query_features: torch.Tensor,
    num_classes: int,
    ks: Sequence[int] = DEFAULT_KS,
    temperature: float = 0.07,
    batch_size: int = 256,
) -> dict[int, torch.Tensor]:
    """Class scores `[Q, num_classes]` of every query for each k (clipped to the training-set size, deduplicated).

    All neighbours are found once for the largest k; a smaller k sums the votes of the first k of them.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}.")
    if not ks or min(ks) < 1:
        raise ValueError(f"k values must be positive, got {list(ks)}.")
    ks = sorted({min(k, train_features.shape[0]) for k in ks})
    train = F.normalize(train_features.float(), dim=1)
    train_labels = train_labels.to(train.device)
    scores = {k: [] for k in ks}
    for start in range(0, query_features.shape[0], batch_size):
        query = F.normalize(query_features[start : start + batch_size].to(train.device).float(), dim=1)
        similarity, index = (query @ train.T).topk(ks[-1], dim=1)  # sorted, most similar first
        weights = (similarity / temperature).exp()
        neighbour_labels = train_labels[index]
        for k in ks:
            votes = torch.zeros(query.shape[0], num_classes, device=train.device)
            scores[k].append(votes.scatter_add_(1, neighbour_labels[:, :k], weights[:, :k]))
    return {k: torch.cat(parts) for k, parts in scores.items()}


def knn_evaluate(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    query_features: torch.Tensor,
    query_labels: torch.Tensor,
    num_classes: int,
    ks: Sequence[int] = DEFAULT_KS,
    temperature: float = 0.07,
    batch_size: int = 256,
) -> list[dict[str, float]]:
    """`[{"k", "temperature", "top1", "top5"}]` for each (clipped) k."""
    scores = knn_scores(train_features, train_labels, query_features, num_classes, ks, temperature, batch_size)
    labels = query_labels.to(train_features.device)
    return [
        {"k": k, "temperature": temperature, **topk_accuracy(values, labels, num_classes)}
        for k, values in scores.items()
    ]
