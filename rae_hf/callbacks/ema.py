"""Exponential moving averages of weights as a `TrainerCallback`: the one EMA implementation of every trainer."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor
from transformers import TrainerCallback

Decay = float | Callable[[int], float]


def _full(value: torch.Tensor) -> torch.Tensor:
    """The whole tensor of an FSDP2 shard (a collective), or the tensor itself."""
    return value.full_tensor() if isinstance(value, DTensor) else value


class EMACallback(TrainerCallback):
    """Keeps `ema = decay * ema + (1 - decay) * weight` for every trainable parameter after each optimizer step.

    - `decay`: a constant in (0, 1), or a callable `step -> decay` (e.g. DINO's cosine 0.992 -> 1), called with the
      number of optimizer steps done so far.
    - `name`: the state's name; several EMAs run at once under different names (JiT's 0.9999 and 0.9996), and each
      is saved in checkpoints as `<name>.safetensors` by `BaseTrainer.add_ema`/`register_state`.
    - `source`: the module whose weights are averaged (default: the trainer's model).
    - `target`: a module updated IN PLACE (a DINO teacher: its parameters named like the source's trainable ones);
      without it the average is an fp32 copy owned by this callback, and `apply_at_train_end=True` copies it into
      the model when training ends, so `save_model`/`push_to_hub` publish the EMA weights.
    """

    def __init__(
        self,
        decay: Decay = 0.9999,
        name: str = "ema",
        target: nn.Module | None = None,
        source: nn.Module | None = None,
        apply_at_train_end: bool = True,
    ):
        if not callable(decay) and not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}.")
        self.decay = decay
        self.name = name
        self.target = target
        self.source = source
        self.apply_at_train_end = apply_at_train_end and target is None
        self.shadow: dict[str, torch.Tensor] | None = None
        self._pairs: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])

    # ----- set-up -----------------------------------------------------------------------------------------------
    def _source(self, model: nn.Module | None) -> nn.Module:
        source = self.source if self.source is not None else model
        if source is None:
            raise ValueError(f"EMA {self.name!r}: no model to average.")
        return source

    @staticmethod
    def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
        return {name: p for name, p in model.named_parameters() if p.requires_grad}

    def _ensure_initialized(self, model: nn.Module | None) -> dict[str, nn.Parameter]:
        params = self._trainable(self._source(model))
        if self.target is not None:
            target = dict(self.target.named_parameters())
            missing = sorted(set(params) - set(target))
            if missing:
                raise ValueError(f"EMA {self.name!r}: the target lacks parameters {missing[:5]}.")
            if self.shadow is not None:  # restored from a checkpoint: write it into the target
                self._load_into_target(target)
            self.shadow = {name: target[name].data for name in params}
            return params
        if self.shadow is None:
            self.shadow = {name: p.detach().float().clone() for name, p in params.items()}
        elif self.shadow.keys() != params.keys():
            raise ValueError(f"EMA {self.name!r} state does not match the model's trainable parameters.")
        for name, p in params.items():
            value = self.shadow[name]
            if isinstance(p, DTensor) and not isinstance(value, DTensor):  # FSDP2: shard it like the parameter
                self.shadow[name] = distribute_tensor(value.to(p.device), p.device_mesh, p.placements)
            elif value.device != p.device:
                self.shadow[name] = value.to(p.device)
        return params

    @torch.no_grad()
    def _load_into_target(self, target: dict[str, nn.Parameter]) -> None:
        for name, value in self.shadow.items():
            target[name].copy_(value)

    def decay_at(self, step: int) -> float:
        """The decay used for the update that completes optimizer step `step`."""
        return float(self.decay(step)) if callable(self.decay) else self.decay

    # ----- training events --------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model: nn.Module | None = None, **kwargs):
        params = self._ensure_initialized(model)
        self._pairs = (list(self.shadow.values()), [params[name] for name in self.shadow])  # resolved once per run

    @torch.no_grad()
    def on_step_end(self, args, state, control, model: nn.Module | None = None, **kwargs):
        shadow, params = self._pairs
        step = state.global_step if state is not None else 0
        weights = [p.to(s.dtype) for s, p in zip(shadow, params, strict=True)]
        torch._foreach_lerp_(shadow, weights, 1.0 - self.decay_at(step))

    def on_train_end(self, args, state, control, model: nn.Module | None = None, **kwargs):
        if self.apply_at_train_end:
            self.copy_to(model)

    # ----- use of the averaged weights --------------------------------------------------------------------------
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

    # ----- checkpoint state -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Full (unsharded) CPU tensors; with FSDP2-sharded weights this gathers, so call it on every process."""
        if self.shadow is None:
            raise RuntimeError(f"The EMA {self.name!r} has no state before training starts.")
        return {name: _full(value.detach()).cpu().contiguous() for name, value in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if self.target is not None:
            target = dict(self.target.named_parameters())
            unknown = sorted(set(state) - set(target))
            if unknown:
                raise ValueError(f"EMA {self.name!r} state has parameters the target lacks: {unknown[:5]}.")
            self.shadow = dict(state)
            self._load_into_target(target)
            self.shadow = {name: target[name].data for name in state}
            return
        self.shadow = {name: value.float().clone() for name, value in state.items()}
