"""Weight rewinding (lottery-ticket style): the whole state dict at a rewind point, reloaded before each round.

The seed rewinds to the `--init` file (step 0) or, with `rewind_lt`, to the start of epoch `rewind_epoch` of round 0.
Tensors are cloned when captured (the seed's Refill aliased them to the pruned weights, so training overwrote them).
"""

from __future__ import annotations

import os

import safetensors.torch
import torch
from torch import nn
from transformers import TrainerCallback

from .masks import MaskSet

REWIND_FILE = "rewind.safetensors"


def capture_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of every tensor of the model's state dict."""
    return {name: value.detach().to("cpu", copy=True).contiguous() for name, value in model.state_dict().items()}


@torch.no_grad()
def rewind(model: nn.Module, state: dict[str, torch.Tensor], masks: MaskSet | None = None) -> None:
    """Load `state` into `model` (all tensors), then zero what `masks` prunes: kept entries get their rewind values."""
    model.load_state_dict(state)
    if masks is not None:
        masks.apply(model)


def save_rewind_state(state: dict[str, torch.Tensor], output_dir: str) -> str:
    """Write the rewind point to `output_dir/rewind.safetensors` (written whole, then renamed)."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, REWIND_FILE)
    safetensors.torch.save_file(state, path + ".tmp")
    os.replace(path + ".tmp", path)
    return path


def load_rewind_state(output_dir: str) -> dict[str, torch.Tensor] | None:
    """The saved rewind point, or None when the run has none yet."""
    path = os.path.join(output_dir, REWIND_FILE)
    return safetensors.torch.load_file(path) if os.path.isfile(path) else None


class RewindCaptureCallback(TrainerCallback):
    """Capture the rewind point after `step` optimizer steps of round 0 (save it in `output_dir`, main process)."""

    def __init__(self, step: int, output_dir: str, is_main_process: bool = True):
        if step < 1:
            raise ValueError(f"rewind step must be >= 1 for a callback (step 0 = the initial weights), got {step}.")
        self.step = step
        self.output_dir = output_dir
        self.is_main_process = is_main_process
        self.state: dict[str, torch.Tensor] | None = None

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            self.state = capture_state(model)
            if self.is_main_process:
                save_rewind_state(self.state, self.output_dir)
