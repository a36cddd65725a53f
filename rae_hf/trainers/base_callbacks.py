"""Callbacks every `BaseTrainer` adds: save-and-stop on SIGTERM/SIGINT, and the epoch of the seeded augmentations."""

from __future__ import annotations

import math
import signal
from typing import Any

from transformers import Trainer, TrainerCallback


class SignalCallback(TrainerCallback):
    """Turns SIGTERM/SIGINT into "save a checkpoint after this step, then stop" (main thread only)."""

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.received is not None:  # a second signal: stop at once
            raise KeyboardInterrupt(f"signal {signum}")
        self.received = signum

    def on_train_begin(self, args, state, control, **kwargs):
        self.received = None
        try:
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        except ValueError:  # not the main thread: leave the handlers alone
            self._previous.clear()

    def on_step_end(self, args, state, control, **kwargs):
        if self.received is not None:
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


class EpochCallback(TrainerCallback):
    """Tells the seeded training data which epoch it serves, before the epoch's data iterator (and its workers) is
    made. Trainer's `state.epoch` is `epoch + step fraction` (restored on resume), so its floor is the loop's epoch;
    accelerate's `DataLoaderShard.set_epoch` reaches the sampler, not the dataset, so Trainer's call does not do it."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        dataset = self.trainer.train_dataset
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(math.floor(state.epoch or 0))
