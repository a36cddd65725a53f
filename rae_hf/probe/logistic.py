"""Full-batch multinomial logistic regression on cached features, solved with L-BFGS (CLIP-style linear evaluation).

Objective (bias not penalized), over `N` training examples:

    mean_i cross_entropy(W x_i + b, y_i) + l2 / 2 * ||W||^2

which is scikit-learn's `LogisticRegression(C=...)` objective divided by `C * N`, i.e. `l2 = 1 / (C * N)`. It is
strictly convex for `l2 > 0`, so the optimum is unique: the result does not depend on the initialization or the
order of the data, only on the solver's tolerance. Features are standardized first (train mean and std), which makes
one `l2` grid fit every encoder; the standardization is folded into the returned linear layer.

Gradients are accumulated over chunks of `chunk_size` rows, so features of any size fit: memory is one chunk's
logits, not the whole set's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "DEFAULT_L2_GRID",
    "LogisticFit",
    "Standardizer",
    "fit_logistic_regression",
    "holdout_split",
    "sweep_l2",
]

# 10^-7 ... 10^0 in half decades (15 values): from nearly unregularized to a head that barely moves from zero.
DEFAULT_L2_GRID = tuple(float(f"{10 ** (exponent / 2):.3g}") for exponent in range(-14, 1))


@dataclass
class Standardizer:
    """Per-dimension `(x - mean) / std` of the training features (std floored at `eps`)."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def fit(cls, features: torch.Tensor, chunk_size: int = 65536, eps: float = 1e-6) -> Standardizer:
        """Mean and std of `[N, D]` features, accumulated in float64 over chunks."""
        total = torch.zeros(features.shape[1], dtype=torch.float64, device=features.device)
        squares = torch.zeros_like(total)
        for start in range(0, features.shape[0], chunk_size):
            chunk = features[start : start + chunk_size].double()
            total += chunk.sum(0)
            squares += chunk.square().sum(0)
        mean = total / features.shape[0]
        std = (squares / features.shape[0] - mean.square()).clamp_min(0).sqrt().clamp_min(eps)
        return cls(mean.float(), std.float())

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        return (features.float() - self.mean) / self.std

    def fold(self, weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The linear layer on raw features equal to `(weight, bias)` on standardized ones."""
        raw_weight = weight / self.std
        return raw_weight, bias - raw_weight @ self.mean


@dataclass
class LogisticFit:
    """A solved head (on standardized features) and how the solve went.

    `loss` is the full objective, `train_loss` its cross-entropy part; `grad_norm` the max-abs gradient at the
    solution; `converged` is True when L-BFGS stopped on its tolerance rather than on `max_iter`.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    l2: float
    loss: float
    train_loss: float
    grad_norm: float
    iterations: int
    converged: bool

    def logits(self, features: torch.Tensor, standardizer: Standardizer) -> torch.Tensor:
        return F.linear(standardizer(features), self.weight, self.bias)


@torch.no_grad()
def _objective(
    weight: torch.Tensor,
    bias: torch.Tensor,
    features: torch.Tensor,
    labels: torch.Tensor,
    standardizer: Standardizer,
    l2: float,
    chunk_size: int,
    gradient: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(objective, mean cross-entropy); with `gradient`, the exact gradient is written to `weight.grad`/`bias.grad`
    (closed form, `(softmax - onehot)^T x / N`, accumulated chunk by chunk: no autograd graph)."""
    count = features.shape[0]
    cross_entropy = torch.zeros((), device=weight.device, dtype=torch.float64)  # float64: the line search compares
    grad_weight, grad_bias = torch.zeros_like(weight), torch.zeros_like(bias)
    for start in range(0, count, chunk_size):
        chunk = standardizer(features[start : start + chunk_size])
        targets = labels[start : start + chunk_size]
        logits = F.linear(chunk, weight, bias)
        cross_entropy += F.cross_entropy(logits, targets, reduction="none").double().sum() / count
        if gradient:
            residual = logits.softmax(dim=1)
            residual[torch.arange(targets.shape[0], device=targets.device), targets] -= 1
            grad_weight.addmm_(residual.T, chunk, alpha=1 / count)
            grad_bias.add_(residual.sum(0), alpha=1 / count)
    loss = cross_entropy + 0.5 * l2 * weight.double().square().sum()
    if gradient:
        weight.grad = grad_weight.add_(weight, alpha=l2)
        bias.grad = grad_bias
    return loss, cross_entropy


def fit_logistic_regression(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    l2: float,
    standardizer: Standardizer,
    *,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
    max_iter: int = 1000,
    tolerance: float = 1e-4,
    chunk_size: int = 65536,
) -> LogisticFit:
    """Minimize the module's objective over `[N, D]` features with L-BFGS (strong Wolfe line search).

    Stops when the max-abs gradient falls below `tolerance` (or the objective stops changing) or after `max_iter`
    iterations. `init` warm-starts from another solution (e.g. the neighbouring `l2` of a sweep).
    """
    if l2 < 0:
        raise ValueError(f"l2 must be >= 0, got {l2}.")
    device = features.device
    labels = labels.to(device)
    if init is None:
        weight = torch.zeros(num_classes, features.shape[1], device=device)
        bias = torch.zeros(num_classes, device=device)
    else:
        weight, bias = (tensor.detach().clone().to(device) for tensor in init)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=tolerance,
        tolerance_change=1e-12,
        history_size=10,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        loss, _ = _objective(weight, bias, features, labels, standardizer, l2, chunk_size, gradient=True)
        return loss

    optimizer.step(closure)
    iterations = optimizer.state[weight].get("n_iter", 0)
    loss, cross_entropy = _objective(weight, bias, features, labels, standardizer, l2, chunk_size, gradient=True)
    grad_norm = max(weight.grad.abs().max().item(), bias.grad.abs().max().item())
    return LogisticFit(
        weight=weight.detach(),
        bias=bias.detach(),
        l2=l2,
        loss=loss.item(),
        train_loss=cross_entropy.item(),
        grad_norm=grad_norm,
        iterations=int(iterations),
        converged=bool(iterations < max_iter and math.isfinite(loss.item())),
    )


def holdout_split(labels: torch.Tensor, fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified `(fit_indices, holdout_indices)`: `round(fraction * count)` examples of every class with at least
    two examples (at least one, never all) go to the holdout, chosen with a seeded permutation."""
    if not 0 < fraction < 1:
        raise ValueError(f"The holdout fraction must be in (0, 1), got {fraction}.")
    generator = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    fit, holdout = [], []
    for label in torch.unique(labels).tolist():
        members = torch.nonzero(labels == label).flatten()
        members = members[torch.randperm(members.shape[0], generator=generator)]
        count = members.shape[0]
        take = min(max(round(fraction * count), 1), count - 1) if count >= 2 else 0
        holdout.append(members[:take])
        fit.append(members[take:])
    return torch.cat(fit).sort().values, torch.cat(holdout).sort().values


def sweep_l2(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    grid: Sequence[float],
    standardizer: Standardizer,
    **fit_kwargs,
) -> list[LogisticFit]:
    """Fits for every `l2` of `grid` (returned in grid order), solved from the strongest regularization to the
    weakest, each warm-started from the previous solution (the path is smooth, so this saves most iterations)."""
    fits: dict[float, LogisticFit] = {}
    init = None
    for l2 in sorted(grid, reverse=True):
        fit = fit_logistic_regression(features, labels, num_classes, l2, standardizer, init=init, **fit_kwargs)
        fits[l2] = fit
        init = (fit.weight, fit.bias)
    return [fits[l2] for l2 in grid]
