"""Exponential moving average of a model's trainable weights, as a `TrainerCallback` shared by every trainer."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from transformers import TrainerCallback


class EMACallback(TrainerCallback):
    """Keeps `ema = decay * ema + (1 - decay) * weight` for every trainable parameter, after each optimizer step.

    Where the weights live: an fp32 copy on the parameters' device, owned by this callback. The trainer saves and
    restores it with each checkpoint (`state_dict`/`load_state_dict`, file `ema.safetensors`). With
    `apply_at_train_end=True` the EMA weights are copied into the model when training ends, so the model that
    `save_model`/`save_pretrained`/`push_to_hub` publish is the EMA model (the raw weights stay in the checkpoints).
    """

    checkpoint_name = "ema"

    def __init__(self, decay: float = 0.9978, apply_at_train_end: bool = True):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}.")
        self.decay = decay
        self.apply_at_train_end = apply_at_train_end
        self.shadow: dict[str, torch.Tensor] | None = None
        self._pairs: tuple[list[torch.Tensor], list[nn.Parameter]] = ([], [])

    @staticmethod
    def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
        return {name: p for name, p in model.named_parameters() if p.requires_grad}

    def _ensure_initialized(self, model: nn.Module) -> dict[str, nn.Parameter]:
        params = self._trainable(model)
        if self.shadow is None:
            self.shadow = {name: p.detach().float().clone() for name, p in params.items()}
        elif self.shadow.keys() != params.keys():
            raise ValueError("EMA state does not match the model's trainable parameters (different model?).")
        for name, p in params.items():
            if self.shadow[name].device != p.device:
                self.shadow[name] = self.shadow[name].to(p.device)
        return params

    def on_train_begin(self, args, state, control, model: nn.Module | None = None, **kwargs):
        params = self._ensure_initialized(model)
        self._pairs = (list(self.shadow.values()), [params[name] for name in self.shadow])  # resolved once per run

    @torch.no_grad()
    def on_step_end(self, args, state, control, model: nn.Module | None = None, **kwargs):
        shadow, params = self._pairs
        torch._foreach_lerp_(shadow, [p.float() for p in params], 1.0 - self.decay)

    def on_train_end(self, args, state, control, model: nn.Module | None = None, **kwargs):
        if self.apply_at_train_end:
            self.copy_to(model)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the model's trainable weights with the EMA weights."""
        params = self._ensure_initialized(model)
        for name, value in self.shadow.items():
            params[name].copy_(value)

    @contextlib.contextmanager
    def swapped_in(self, model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily run `model` with the EMA weights (e.g. for evaluation), restoring the raw weights after."""
        params = self._ensure_initialized(model)
        backup = {name: p.detach().clone() for name, p in params.items()}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, value in backup.items():
                    params[name].copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.shadow is None:
            raise RuntimeError("The EMA has no state before training starts.")
        return {name: value.detach().cpu().contiguous() for name, value in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.shadow = {name: value.float().clone() for name, value in state.items()}
