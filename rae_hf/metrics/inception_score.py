"""Inception Score (IS) with torch-fidelity's definition, as a multi-process torchmetrics metric.

`IS = exp(E_x KL(p(y|x) || p(y)))` on the FID Inception-v3's 1008-way logits WITHOUT the fc bias (torch-fidelity's
`logits_unbiased`, the ADM evaluator's softmax input), in float64, averaged over `splits` equal parts of the
samples (mean and population std over the parts). torch-fidelity's defaults: 10 splits, the samples shuffled first
with `numpy.random.RandomState(2020).permutation`. ADM reports the mean over 5000-image parts of 50k unshuffled
samples: `shuffle=False` with 10 splits.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from .fid import InceptionFeatureExtractor

__all__ = ["InceptionScore", "inception_score"]


def inception_score(logits: Tensor, splits: int = 10, shuffle: bool = True, seed: int = 2020) -> tuple[float, float]:
    """`(mean, std)` of the Inception Score of `logits` `[N, C]` over `splits` parts (torch-fidelity's `isc`)."""
    if logits.ndim != 2:
        raise ValueError(f"Expected logits [N, C], got shape {tuple(logits.shape)}.")
    count = logits.shape[0]
    if splits < 1 or count < splits:
        raise ValueError(
            f"The Inception Score over splits={splits} needs at least {max(splits, 1)} images, got {count}."
        )
    if shuffle:
        order = torch.from_numpy(np.random.RandomState(seed).permutation(count)).to(logits.device)
        logits = logits[order]
    logits = logits.double()
    log_p = logits.log_softmax(dim=1)
    p = log_p.exp()
    scores = []
    for index in range(splits):
        part = slice(index * count // splits, (index + 1) * count // splits)
        log_marginal = p[part].mean(dim=0, keepdim=True).log()
        kl = (p[part] * (log_p[part] - log_marginal)).sum(dim=1).mean()
        scores.append(kl.exp())
    scores = torch.stack(scores)
    return float(scores.mean()), float(scores.std(unbiased=False))


class InceptionScore(Metric):
    """Streaming Inception Score of generated images (float images `[B, 3, H, W]` in [0, 1]).

    `update(images)` runs the FID Inception-v3; `update_logits(logits)` adds logits already computed (e.g. from
    `InceptionFeatureExtractor.pool_and_logits`, one network pass shared with the FID). The logits of all processes
    are concatenated in process order at `compute()` (a collective: every process calls it), which returns
    `(mean, std)` 0-d float64 tensors. Each image must be fed by exactly one process (shard without padding).

    Args:
        feature: an `InceptionFeatureExtractor` to reuse (default: a new one from `inception_weights`).
        inception_weights: local FID Inception weights (None downloads them).
        splits, shuffle, seed: as torch-fidelity (`isc_splits=10`, `samples_shuffle=True`, `rng_seed=2020`).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        feature: InceptionFeatureExtractor | None = None,
        inception_weights: str | os.PathLike | None = None,
        splits: int = 10,
        shuffle: bool = True,
        seed: int = 2020,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if feature is not None and inception_weights is not None:
            raise ValueError("inception_weights applies to the default Inception feature only; got a feature module.")
        if splits < 1:
            raise ValueError(f"splits={splits} must be >= 1.")
        self.feature = feature if feature is not None else InceptionFeatureExtractor(inception_weights)
        self.splits, self.shuffle, self.seed = splits, shuffle, seed
        self.add_state("logits", default=[], dist_reduce_fx="cat")

    def update(self, images: Tensor) -> None:
        """Add float images `[B, 3, H, W]` in [0, 1]."""
        self.logits.append(self.feature.pool_and_logits(images)[1])

    def update_logits(self, logits: Tensor) -> None:
        """Add precomputed Inception logits `[B, 1008]` (without the fc bias)."""
        if logits.ndim != 2:
            raise ValueError(f"Expected logits [B, C], got shape {tuple(logits.shape)}.")
        self._computed = None  # what torchmetrics' update wrapper does
        self._update_count += 1
        self.logits.append(logits.detach().float())

    def compute(self) -> tuple[Tensor, Tensor]:
        if isinstance(self.logits, list) and not self.logits:
            raise ValueError("The Inception Score has no images: call update() first.")
        mean, std = inception_score(dim_zero_cat(self.logits), self.splits, self.shuffle, self.seed)
        return torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)
