"""Condition dropout for classifier-free guidance (training side)."""

from __future__ import annotations

import torch


def drop_labels(
    labels: torch.Tensor, null_label: int, probability: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Replace each label by `null_label` with the given probability (no host sync)."""
    if probability <= 0:
        return labels
    drop = torch.rand(labels.shape, device=labels.device, generator=generator) < probability
    return torch.where(drop, torch.full_like(labels, null_label), labels)


__all__ = ["drop_labels"]
