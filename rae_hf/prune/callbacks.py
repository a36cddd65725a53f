"""Pruning as `TrainerCallback`s: one callback per round keeps the model under the round's masks while it trains and,
when training ends, computes the next round's masks from the trained weights.

- `PruningCallback` (`none`): plain training, no masks.
- `MagnitudePruningCallback` (IMP): trains under M; next M' = global magnitude step within M.
- `RefillCallback`: trains under R; next M' = magnitude step within R, R' = Refill(M') (Refill+ with fillback > 0).
- `RSSTCallback`: trains under M | R with the growing penalty `lambda * w` added to the gradients of M & ~R; at the
  round's end R is hard-applied to the trained weights, then M' = magnitude step within R, R' = Refill(M').
Round 0 of every method is dense (empty masks). Masks hold for the targeted weights and the unit biases (refill).
State (`state_dict`) = the round's masks, so `trainer.register_state("prune_masks", callback)` checkpoints them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from transformers import TrainerCallback

from .magnitude import global_magnitude_masks
from .masks import MaskSet, dense_masks
from .refill import refill_masks
from .rsst import rsst_lambda
from .structure import DEFAULT_TARGETS, unit_groups


@dataclass
class RoundMasks:
    """Masks of one round: `train` (entries that may be nonzero), `penalty` (RSST: M & ~R), `hard` (RSST: R, applied
    to the trained weights at the round's end), `magnitude` (the unstructured M, for reports)."""

    train: MaskSet
    penalty: MaskSet | None = None
    hard: MaskSet | None = None
    magnitude: MaskSet | None = None

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {}
        for kind in ("train", "penalty", "hard", "magnitude"):
            masks = getattr(self, kind)
            if masks is not None:
                state.update({f"{kind}/{name}": value for name, value in masks.state_dict().items()})
        return state

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> RoundMasks:
        parts: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in state.items():
            kind, name = key.split("/", 1)
            parts.setdefault(kind, {})[name] = value
        return cls(**{kind: MaskSet(values) for kind, values in parts.items()} | {"train": MaskSet(parts.get("train"))})

    def final(self) -> MaskSet:
        """What the weights satisfy once the round is over (`hard` when set, else `train`)."""
        return self.hard if self.hard is not None else self.train


class PruningCallback(TrainerCallback):
    """Plain training (method `none`); base of the pruning callbacks (mask enforcement, next-round masks)."""

    method = "none"

    def __init__(
        self,
        masks: RoundMasks | None = None,
        rate: float = 0.2,
        target_suffixes: Sequence[str] = DEFAULT_TARGETS,
        compute_next: bool = True,
    ):
        self.masks = masks or RoundMasks(MaskSet())
        self.rate = rate
        self.target_suffixes = tuple(target_suffixes)
        self.compute_next = compute_next
        self.next_masks: RoundMasks | None = None

    # ----- checkpoint state ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.masks.state_dict()

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.masks = RoundMasks.from_state_dict(state)

    # ----- training -----------------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.masks.train.apply(model)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.masks.train.mask_gradients(model)

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.masks.train.apply(model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.masks.hard is not None:
            self.masks.hard.apply(model)
        if self.compute_next:
            self.next_masks = self.end_round(model)

    # ----- next round ---------------------------------------------------------------------------------------------
    def weight_names(self, model) -> list[str]:
        """The targeted weights (what magnitude pruning ranks)."""
        return [member.name for group in unit_groups(model, self.target_suffixes) for member in group.weights]

    def magnitude_step(self, model) -> MaskSet:
        """Remove `rate` of the entries kept now (the final mask of this round; dense in round 0)."""
        names = self.weight_names(model)
        current = self.masks.final()
        base = MaskSet({n: current[n] if n in current else dense_masks(model, [n])[n] for n in names})
        return global_magnitude_masks(dict(model.named_parameters()), base, self.rate)

    def end_round(self, model) -> RoundMasks | None:
        """The next round's masks computed from the trained `model` (None: no pruning)."""
        return None


class MagnitudePruningCallback(PruningCallback):
    """Iterative global magnitude pruning (unstructured)."""

    method = "magnitude"

    def end_round(self, model) -> RoundMasks:
        magnitude = self.magnitude_step(model)
        return RoundMasks(train=magnitude, magnitude=magnitude)


class RefillCallback(PruningCallback):
    """IMP followed by Refill per unit group (`fillback_rate` > 0: Refill+)."""

    method = "refill"

    def __init__(
        self,
        masks: RoundMasks | None = None,
        rate: float = 0.2,
        fillback_rate: float = 0.2,
        criterion: str = "l1",
        scoring_batch: Mapping[str, torch.Tensor] | None = None,
        target_suffixes: Sequence[str] = DEFAULT_TARGETS,
        compute_next: bool = True,
    ):
        super().__init__(masks, rate, target_suffixes, compute_next)
        self.fillback_rate = fillback_rate
        self.criterion = criterion
        self.scoring_batch = scoring_batch

    def structured_step(self, model) -> tuple[MaskSet, MaskSet]:
        """(M', R'): the magnitude step, then Refill of M' scored on the trained model."""
        magnitude = self.magnitude_step(model)
        batch = None
        if self.scoring_batch is not None:
            device = next(model.parameters()).device
            batch = {k: v.to(device) for k, v in self.scoring_batch.items() if isinstance(v, torch.Tensor)}
        refilled, _ = refill_masks(
            model, unit_groups(model, self.target_suffixes), magnitude, self.fillback_rate, self.criterion, batch
        )
        return magnitude, refilled

    def end_round(self, model) -> RoundMasks:
        magnitude, refilled = self.structured_step(model)
        return RoundMasks(train=refilled, magnitude=magnitude)


class RSSTCallback(RefillCallback):
    """RSST: train under M | R, penalize M & ~R with a growing `lambda * w`, hard-apply R at the round's end."""

    method = "rsst"

    def __init__(
        self,
        masks: RoundMasks | None = None,
        rate: float = 0.2,
        fillback_rate: float = 0.0,
        criterion: str = "l1",
        scoring_batch: Mapping[str, torch.Tensor] | None = None,
        target_suffixes: Sequence[str] = DEFAULT_TARGETS,
        compute_next: bool = True,
        reg_curve: str = "exp_custom_exponents",
        reg_granularity: float = 1.0,
        reg_exponent: float = 4.0,
    ):
        super().__init__(masks, rate, fillback_rate, criterion, scoring_batch, target_suffixes, compute_next)
        self.reg_curve = reg_curve
        self.reg_granularity = reg_granularity
        self.reg_exponent = reg_exponent
        self.updates_per_epoch = 1
        self.current_lambda = 0.0
        rsst_lambda(reg_curve, reg_granularity, reg_exponent, 0, 1)  # validate the curve name now

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        super().on_train_begin(args, state, control, model=model, **kwargs)
        if train_dataloader is not None:
            self.updates_per_epoch = max(math.ceil(len(train_dataloader) / args.gradient_accumulation_steps), 1)
        elif state.max_steps and args.num_train_epochs:
            self.updates_per_epoch = max(math.ceil(state.max_steps / args.num_train_epochs), 1)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        super().on_pre_optimizer_step(args, state, control, model=model, **kwargs)
        if self.masks.penalty is None or not len(self.masks.penalty):
            return
        self.current_lambda = rsst_lambda(
            self.reg_curve, self.reg_granularity, self.reg_exponent, state.global_step, self.updates_per_epoch
        )
        with torch.no_grad():
            for param, penalty in self.masks.penalty._bound(model):
                if param.grad is not None:
                    param.grad.add_(param * penalty, alpha=self.current_lambda)

    def end_round(self, model) -> RoundMasks:
        magnitude, refilled = self.structured_step(model)
        # Unit biases stay trainable while their weights are being penalized; R zeroes them at the round's end.
        refilled_weights = MaskSet({name: mask for name, mask in refilled.items() if name in magnitude})
        return RoundMasks(
            train=magnitude.union(refilled_weights),
            penalty=magnitude.minus(refilled_weights),
            hard=refilled,
            magnitude=magnitude,
        )


PRUNING_CALLBACKS: dict[str, type[PruningCallback]] = {
    cls.method: cls for cls in (PruningCallback, MagnitudePruningCallback, RefillCallback, RSSTCallback)
}
