"""Linear heads trained together on the same features: a grid over learning rates and feature variants.

All heads live in one `LinearHeadGrid` and one optimizer with a param group per learning rate; every batch goes
through every head, so the whole grid costs one pass over the data per epoch. Protocols:

- DINOv2: plain linear head, N(0, 0.01) init, SGD momentum 0.9, weight decay 0, cosine to 0, 13 base learning rates
  (1e-5 ... 0.1) over CLS of the last 1 or 4 blocks, with or without the patch-token average.
- MAE: BatchNorm1d(affine=False, eps=1e-6) then linear (trunc-normal std 0.01), LARS, base lr 0.1, warmup.

Learning rates are *base* values: the optimizer uses `base x batch_size / 256` (DINOv2's and MAE's linear scaling
rule) unless `scale_lr_by_batch=False`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from rae_hf.models.probe.configuration_probe import BN_EPS, HEAD_INITS
from rae_hf.probe.accuracy import accuracy_metrics

__all__ = [
    "DINOV2_LEARNING_RATES",
    "LARS",
    "HeadSpec",
    "HeadTrainingResult",
    "LinearHeadGrid",
    "build_head_optimizer",
    "evaluate_heads",
    "full_batch_gradient_norms",
    "grid_loss",
    "train_heads",
]

DINOV2_LEARNING_RATES = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1)
HEAD_OPTIMIZERS = ("sgd", "lars", "adamw")
LR_REFERENCE_BATCH = 256

logger = logging.getLogger(__name__)


class FeatureBatches(Protocol):
    """Where heads get `({variant name: [B, D]}, labels)` batches from (see `rae_hf.probe.features`)."""

    def __len__(self) -> int: ...

    def batches(self, order: torch.Tensor, batch_size: int): ...


@dataclass(frozen=True)
class HeadSpec:
    """One head of the grid: its feature variant and base learning rate."""

    variant: str
    learning_rate: float


class LinearHeadGrid(nn.Module):
    """One linear head per (feature variant, base learning rate).

    With `batchnorm`, each variant's features go through a BatchNorm1d(affine=False, eps=1e-6) first (MAE). It has
    no parameters and its statistics depend only on the features, so the heads of a variant share it.

    Args:
        variant_dims: feature length of every variant, in grid order.
        learning_rates: base learning rates (one head per variant and value).
        init: `"normal"` (DINOv2) or `"trunc_normal"` (MAE) weights with std `init_std`; biases start at zero.
        seed: seed of the initialization (independent of the global RNG).
    """

    def __init__(
        self,
        variant_dims: dict[str, int],
        learning_rates: Sequence[float],
        num_classes: int,
        batchnorm: bool = False,
        init: str = "normal",
        init_std: float = 0.01,
        seed: int = 0,
    ):
        super().__init__()
        if init not in HEAD_INITS:
            raise ValueError(f"init must be one of {HEAD_INITS}, got {init!r}.")
        if not learning_rates or min(learning_rates) <= 0 or len(set(learning_rates)) != len(learning_rates):
            raise ValueError(f"learning_rates must be distinct positive values, got {list(learning_rates)}.")
        self.num_classes = num_classes
        self.batchnorm = batchnorm
        self.specs = [HeadSpec(variant, float(lr)) for variant in variant_dims for lr in learning_rates]
        self.norms = nn.ModuleDict(
            {
                variant: nn.BatchNorm1d(dim, affine=False, eps=BN_EPS) if batchnorm else nn.Identity()
                for variant, dim in variant_dims.items()
            }
        )
        self.heads = nn.ModuleList(nn.Linear(variant_dims[spec.variant], num_classes) for spec in self.specs)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for head in self.heads:
                if init == "normal":
                    head.weight.normal_(0.0, init_std, generator=generator)
                else:
                    nn.init.trunc_normal_(head.weight, std=init_std, generator=generator)
                head.bias.zero_()

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits `[num_heads, B, num_classes]` from `{variant: [B, D]}`."""
        normed = {variant: norm(features[variant]) for variant, norm in self.norms.items()}
        return torch.stack([head(normed[spec.variant]) for head, spec in zip(self.heads, self.specs, strict=True)])

    def param_groups(self, lr_scale: float = 1.0) -> list[dict]:
        """One optimizer param group per base learning rate, holding the heads (of all variants) that use it."""
        groups: dict[float, list[nn.Parameter]] = {}
        for head, spec in zip(self.heads, self.specs, strict=True):
            groups.setdefault(spec.learning_rate, []).extend(head.parameters())
        return [{"params": params, "lr": lr * lr_scale, "base_lr": lr} for lr, params in groups.items()]


def grid_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over heads of each head's mean cross-entropy (heads share no parameter, so each gets its own gradient),
    and the per-head losses `[num_heads]`."""
    num_heads = logits.shape[0]
    per_example = F.cross_entropy(logits.permute(1, 2, 0), labels[:, None].expand(-1, num_heads), reduction="none")
    per_head = per_example.mean(dim=0)
    return per_head.sum(), per_head


class LARS(torch.optim.Optimizer):
    """SGD with momentum where matrices get a layer-wise trust ratio (You et al., 2017), as in MAE's linear probe.

    For a >1-D parameter `p` with update `u = grad + weight_decay * p`, the step uses
    `u * trust_coefficient * ||p|| / ||u||` (1 when either norm is 0); biases are updated like plain SGD.
    """

    def __init__(
        self, params, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 0.0, trust_coefficient=1e-3
    ):
        if lr <= 0 or not 0 <= momentum < 1 or weight_decay < 0:
            raise ValueError(f"Invalid LARS settings lr={lr}, momentum={momentum}, weight_decay={weight_decay}.")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "trust_coefficient": trust_coefficient,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                update = param.grad
                if param.ndim > 1:
                    update = update.add(param, alpha=group["weight_decay"])
                    param_norm, update_norm = param.norm(), update.norm()
                    ratio = group["trust_coefficient"] * param_norm / update_norm
                    ratio = torch.where((param_norm > 0) & (update_norm > 0), ratio, torch.ones_like(ratio))
                    update = update * ratio
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(param)
                buffer = state["momentum_buffer"].mul_(group["momentum"]).add_(update)
                param.add_(buffer, alpha=-group["lr"])
        return loss


def build_head_optimizer(
    heads: LinearHeadGrid, name: str, lr_scale: float = 1.0, momentum: float = 0.9, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """`sgd` (momentum), `lars` or `adamw` over the grid, one param group per base learning rate."""
    groups = heads.param_groups(lr_scale)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=momentum, weight_decay=weight_decay)
    if name == "lars":
        return LARS(groups, lr=groups[0]["lr"], momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=groups[0]["lr"], weight_decay=weight_decay)
    raise ValueError(f"Unknown head optimizer {name!r}; choose from {HEAD_OPTIMIZERS}.")


@dataclass
class HeadTrainingResult:
    """How the grid was trained: the optimizer, steps and passes over the data, the effective batch size and lr
    scale, each head's mean training loss over its last epoch (non-finite for a diverged head) and every step's
    minibatch loss per head (`loss_history`, `[steps, heads]`, on the training device)."""

    optimizer: torch.optim.Optimizer
    steps: int
    epochs: int
    batch_size: int
    lr_scale: float
    train_loss: list[float]
    loss_history: torch.Tensor


def train_heads(
    heads: LinearHeadGrid,
    source: FeatureBatches,
    *,
    num_epochs: float,
    batch_size: int,
    device: torch.device | str = "cpu",
    optimizer: str = "sgd",
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    warmup_epochs: float = 0.0,
    scale_lr_by_batch: bool = True,
    max_steps: int = 0,
    min_steps: int = 0,
    seed: int = 0,
    progress: bool = True,
) -> HeadTrainingResult:
    """Train every head of the grid at once, with a cosine schedule (after a linear warmup) to zero.

    Each epoch draws a seeded permutation of the examples and drops the last incomplete batch; the batch is capped
    at the number of examples. `max_steps > 0` overrides `num_epochs`; otherwise training runs for at least
    `min_steps` optimizer steps whatever `num_epochs` gives (a small dataset gets enough steps to converge).
    """
    num_examples = len(source)
    batch_size = min(batch_size, num_examples)
    if heads.batchnorm and batch_size < 2:
        raise ValueError("BatchNorm heads need batches of at least 2 examples.")
    steps_per_epoch = num_examples // batch_size
    total_steps = max_steps if max_steps > 0 else max(1, round(num_epochs * steps_per_epoch), min_steps)
    lr_scale = batch_size / LR_REFERENCE_BATCH if scale_lr_by_batch else 1.0
    heads.to(device).train()
    opt = build_head_optimizer(heads, optimizer, lr_scale, momentum, weight_decay)
    scheduler = get_cosine_schedule_with_warmup(opt, round(warmup_epochs * steps_per_epoch), total_steps)
    generator = torch.Generator().manual_seed(seed)
    step, epochs = 0, 0
    history = torch.zeros(total_steps, len(heads.specs), device=device)
    with tqdm(total=total_steps, desc=f"Training {len(heads.specs)} heads", unit="step", disable=not progress) as bar:
        while step < total_steps:
            order = torch.randperm(num_examples, generator=generator)[: steps_per_epoch * batch_size]
            epochs += 1
            epoch_loss = torch.zeros(len(heads.specs), device=device)
            epoch_steps = 0
            for features, labels in source.batches(order, batch_size):
                loss, per_head = grid_loss(heads(features), labels)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                scheduler.step()
                epoch_loss += per_head.detach()
                history[step] = per_head.detach()
                epoch_steps += 1
                step += 1
                bar.update()
                if step == total_steps:
                    break
    train_loss = (epoch_loss / max(epoch_steps, 1)).tolist()
    diverged = [spec for spec, value in zip(heads.specs, train_loss, strict=True) if not math.isfinite(value)]
    if diverged:  # heads share no parameter: the others trained normally
        logger.warning("Heads %s diverged (non-finite loss); they are reported but never selected.", diverged)
    return HeadTrainingResult(opt, step, epochs, batch_size, lr_scale, train_loss, history)


def full_batch_gradient_norms(
    heads: LinearHeadGrid, source: FeatureBatches, batch_size: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Norm of each head's gradient of its mean cross-entropy over all of `source` (grid order, `[num_heads]`),
    with normalization layers in evaluation mode. Compare at the start and the end of training to see whether a
    head reached a stationary point."""
    heads.to(device).eval()
    heads.zero_grad(set_to_none=True)
    count = len(source)
    for features, labels in source.batches(torch.arange(count), batch_size):
        _, per_head = grid_loss(heads(features), labels)
        (per_head.sum() * labels.shape[0] / count).backward()
    norms = torch.stack(
        [torch.cat([p.grad.flatten() for p in head.parameters()]).norm() for head in heads.heads]  # type: ignore[union-attr]
    )
    heads.zero_grad(set_to_none=True)
    return norms.detach()


@torch.no_grad()
def evaluate_heads(
    heads: LinearHeadGrid, source: FeatureBatches, batch_size: int, device: torch.device | str = "cpu"
) -> list[dict[str, float]]:
    """Top-1/top-5 accuracy of every head (grid order) on all examples of `source`."""
    heads.to(device).eval()
    metrics = [accuracy_metrics(heads.num_classes, device) for _ in heads.specs]
    for features, labels in source.batches(torch.arange(len(source)), batch_size):
        for metric, logits in zip(metrics, heads(features), strict=True):
            metric.update(logits, labels)
    return [{name: float(value) for name, value in metric.compute().items()} for metric in metrics]
