"""Per-micro-batch random generators for the diffusion trainers: each a function of (seed, optimizer step,
micro-batch index within the step, process), so a resumed run draws exactly what the uninterrupted run drew."""

from __future__ import annotations

import torch

from ..data.seeded import sample_seed

__all__ = ["StepRNG"]


class StepRNG:
    """`rng(step, device)` -> a fresh `torch.Generator` for the next micro-batch of optimizer step `step`.

    The micro-batch counter restarts whenever `step` changes; `reset()` restarts it for the same step (to draw a
    step's randomness again)."""

    def __init__(self, seed: int, process_index: int):
        self.seed = seed
        self.process_index = process_index
        self.reset()

    def reset(self) -> None:
        self._step, self._micro = -1, 0

    def __call__(self, step: int, device: torch.device | str) -> torch.Generator:
        if step != self._step:
            self._step, self._micro = step, 0
        seed = sample_seed(sample_seed(self.seed, step, self._micro), self.process_index, 0)
        self._micro += 1
        return torch.Generator(device).manual_seed(seed)
