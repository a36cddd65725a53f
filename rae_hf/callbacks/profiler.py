"""A few training steps under `torch.profiler`, written as a TensorBoard / Chrome trace."""

from __future__ import annotations

import os

import torch
from transformers import TrainerCallback


class TorchProfilerCallback(TrainerCallback):
    """Profiles `active` optimizer steps after `wait + warmup` steps; the trace lands in `<output_dir>/profile`.

    Open it with TensorBoard (`tensorboard --logdir <output_dir>/profile`) or chrome://tracing / Perfetto.
    """

    def __init__(self, output_dir: str, active: int = 5, wait: int = 1, warmup: int = 1):
        if active <= 0:
            raise ValueError(f"active={active} profiled steps must be positive.")
        self.trace_dir = os.path.join(output_dir, "profile")
        self.schedule = torch.profiler.schedule(wait=wait, warmup=warmup, active=active, repeat=1)
        self.profiler: torch.profiler.profile | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.profiler = torch.profiler.profile(
            activities=activities,
            schedule=self.schedule,
            on_trace_ready=torch.profiler.tensorboard_trace_handler(self.trace_dir),
            record_shapes=True,
            profile_memory=True,
        )
        self.profiler.start()

    def on_step_end(self, args, state, control, **kwargs):
        self.profiler.step()

    def on_train_end(self, args, state, control, **kwargs):
        self.profiler.stop()
