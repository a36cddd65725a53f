"""Exact latent normalization statistics of an RAE encoder over a dataset (streaming, multi-process aware)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from tqdm.auto import tqdm

from .modeling_rae import RAEModel


class RunningMoments:
    """Per-element count, mean and sum of squared deviations in float64, merged batch by batch (Chan et al.).

    Merging is exact up to float64 rounding, so the result equals a two-pass computation over all samples and does
    not depend on how they were split into batches or processes.
    """

    def __init__(self):
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def update(self, batch: torch.Tensor) -> None:
        """Add samples `[N, *shape]`."""
        batch = batch.double()
        self.merge(batch.shape[0], batch.mean(0), ((batch - batch.mean(0)) ** 2).sum(0))

    def merge(self, count: int, mean: torch.Tensor, m2: torch.Tensor) -> None:
        if count == 0:
            return
        if self.mean is None:
            self.count, self.mean, self.m2 = count, mean.clone(), m2.clone()
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * count / total)
        self.count = total

    @property
    def variance(self) -> torch.Tensor:
        """Population variance (divides by the number of samples)."""
        return self.m2 / self.count


@torch.no_grad()
def compute_latent_stats(
    model: RAEModel, batches: Iterable[dict], accelerator=None, max_samples: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Mean and variance `[C, h, w]` of the raw (noise-free, unnormalized) encoder latents over `batches`.

    Under several processes each one passes its own shard of the data (each image counted once); the moments are
    gathered and merged. Returns `(mean, var, number_of_images)` in float32.
    """
    model.eval()
    device = next(model.decoder.parameters()).device
    moments = RunningMoments()
    grid = model.config.latent_grid_size
    show = accelerator is None or accelerator.is_local_main_process
    for batch in tqdm(batches, desc="latent statistics", disable=not show):
        images = batch["pixel_values"].to(device)
        if max_samples is not None:
            images = images[: max(0, max_samples - moments.count)]
            if images.shape[0] == 0:
                break
        tokens = model.encode_tokens(images)
        moments.update(tokens.transpose(1, 2).reshape(tokens.shape[0], -1, grid, grid))
    if moments.mean is None:
        raise ValueError("No images to compute latent statistics from.")
    if accelerator is not None and accelerator.num_processes > 1:
        counts = accelerator.gather(torch.tensor([moments.count], device=device, dtype=torch.float64))
        means = accelerator.gather(moments.mean.unsqueeze(0))
        m2s = accelerator.gather(moments.m2.unsqueeze(0))
        moments = RunningMoments()
        for count, mean, m2 in zip(counts.tolist(), means, m2s, strict=True):
            moments.merge(int(count), mean, m2)
    return moments.mean.float(), moments.variance.float(), moments.count
