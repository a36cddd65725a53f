"""Recovery metrics of the text-as-pixels task."""

from __future__ import annotations

import torch


def token_accuracy(predicted: torch.Tensor, target: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Fraction of the non-PAD target positions (content and EOS) whose token was recovered (a 0-d tensor)."""
    mask = target != pad_id
    return ((predicted == target) & mask).sum() / mask.sum().clamp_min(1)


def sequence_accuracy(predicted: torch.Tensor, target: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Fraction of texts recovered exactly: every non-PAD position right (a 0-d tensor)."""
    wrong = ((predicted != target) & (target != pad_id)).any(dim=1)
    return (~wrong).float().mean()


__all__ = ["sequence_accuracy", "token_accuracy"]
