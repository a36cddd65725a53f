"""Warnings that tell whether a probe's number measures the encoder or the head's optimizer and the data size.

Each check returns a `ProbeWarning` (or None); `run_probe` logs them and writes them into the report.

- `edge_of_grid`: the selected learning rate / regularization is the first or last of its grid: the optimum may lie
  outside it, so the accuracy may be an underestimate.
- `not_converged`: the selected head's training loss was still falling at the end (relative drop over the last tenth
  of training), its full-batch gradient is still large compared with the start, or L-BFGS hit its iteration limit.
- `small_validation`: the 95% confidence interval of top-1 (Wilson score) is wider than +/- `max_half_width`: the
  reported digits are not significant; compare encoders only on differences larger than the interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

__all__ = [
    "GRADIENT_RATIO_THRESHOLD",
    "LOSS_DROP_THRESHOLD",
    "ProbeWarning",
    "edge_of_grid",
    "loss_drop_last_tenth",
    "not_converged",
    "small_validation",
    "wilson_interval",
]

LOSS_DROP_THRESHOLD = 0.01  # relative fall of the training loss over the last tenth of training
GRADIENT_RATIO_THRESHOLD = 0.1  # final / initial full-batch gradient norm
Z_95 = 1.959963984540054


@dataclass(frozen=True)
class ProbeWarning:
    """`code` (`edge_of_grid`, `not_converged`, `small_validation`, `unseen_labels`) and a message for people."""

    code: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def edge_of_grid(name: str, grid: Sequence[float], selected: float, what: str) -> ProbeWarning | None:
    """A warning when `selected` is the smallest or largest of a grid of at least 2 values."""
    values = sorted(set(grid))
    if len(values) < 2 or values[0] < selected < values[-1]:
        return None
    side = "smallest" if selected == values[0] else "largest"
    return ProbeWarning(
        "edge_of_grid",
        f"The selected {name} {selected:g} ({what}) is the {side} of its grid {values[0]:g} ... {values[-1]:g}: the "
        f"optimum may lie outside it and the accuracy may be an underestimate. Extend the grid past {selected:g}.",
    )


def loss_drop_last_tenth(losses: torch.Tensor) -> torch.Tensor:
    """Relative fall of the mean training loss from the tenth of training before the last to the last tenth, per
    head: `losses` is `[steps, heads]` (per-step minibatch losses); 0 with fewer than 20 steps."""
    steps = losses.shape[0]
    window = steps // 10
    if window < 2:
        return torch.zeros(losses.shape[1], device=losses.device)
    before = losses[-2 * window : -window].mean(0)
    last = losses[-window:].mean(0)
    return (before - last) / before.abs().clamp_min(1e-12)


def not_converged(
    what: str,
    *,
    loss_drop: float | None = None,
    gradient_ratio: float | None = None,
    hit_iteration_limit: bool = False,
    advice: str = "train longer (--min_head_steps, --num_train_epochs) or use the default L-BFGS solver",
) -> ProbeWarning | None:
    """A warning when any sign of an unfinished optimization is present (None when there is none)."""
    reasons = []
    if loss_drop is not None and loss_drop > LOSS_DROP_THRESHOLD:
        reasons.append(f"its training loss still fell by {100 * loss_drop:.1f}% over the last tenth of training")
    if gradient_ratio is not None and gradient_ratio > GRADIENT_RATIO_THRESHOLD:
        reasons.append(
            f"its full-batch gradient is still {100 * gradient_ratio:.0f}% of the initial one "
            f"(converged heads get below {100 * GRADIENT_RATIO_THRESHOLD:.0f}%)"
        )
    if hit_iteration_limit:
        reasons.append("L-BFGS stopped at its iteration limit")
    if not reasons:
        return None
    return ProbeWarning(
        "not_converged",
        f"The {what} has not converged: {'; '.join(reasons)}. The accuracy may measure the optimizer more than the "
        f"encoder: {advice}.",
    )


def wilson_interval(accuracy: float, count: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a proportion `accuracy` observed on `count` examples (95% by default)."""
    if count <= 0:
        return 0.0, 1.0
    denominator = 1 + z * z / count
    centre = (accuracy + z * z / (2 * count)) / denominator
    half = z * math.sqrt(accuracy * (1 - accuracy) / count + z * z / (4 * count * count)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def small_validation(accuracy: float, count: int, max_half_width: float = 0.01) -> ProbeWarning | None:
    """A warning when the 95% interval of top-1 on `count` validation images is wider than +/- `max_half_width`."""
    low, high = wilson_interval(accuracy, count)
    if (high - low) / 2 <= max_half_width:
        return None
    return ProbeWarning(
        "small_validation",
        f"Only {count} validation images: top-1 {100 * accuracy:.1f}% has a 95% confidence interval of "
        f"[{100 * low:.1f}, {100 * high:.1f}]%. Differences smaller than that between encoders or settings are "
        "noise; use a larger validation split for finer comparisons.",
    )
