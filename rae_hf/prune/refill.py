"""Refill (SLTH `prune_model_custom_fillback`): turn an unstructured mask into whole units per layer.

Per unit group (a block's heads, a block's MLP channels, or a Linear's output rows) with magnitude mask M over its
weights: `num_channel = ones(M) / entries_per_unit` (a float), `keep = int(num_channel + (units - num_channel) *
fillback_rate)`; the `keep` best units by `criterion` become all-ones (weights and their bias entries), the others
all-zero. `fillback_rate` 0 is Refill, > 0 Refill+. Criteria, computed on the trained model:
- `remain`: surviving entries of M per unit; `magnitude`: L1 of the trained weights under M;
- `l1` / `l2`: sum |a| / sum a^2 of the unit's activation on one training batch (the head's attention output /
  the MLP channel after the activation: what `proj` / `fc2` read; a Linear's output for plain rows);
- `saliency`: sum |a * dL/da| on that batch.
Unlike the public code: exactly `keep` units (ties broken by position, no random extra), every criterion works.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .masks import MaskSet
from .structure import UnitGroup, per_unit_sum, unit_mask

CRITERIA = ("remain", "magnitude", "l1", "l2", "saliency")
ACTIVATION_CRITERIA = ("l1", "l2", "saliency")


def refill_keep_count(ones: float, entries_per_unit: int, num_units: int, fillback_rate: float) -> int:
    """`int(num_channel + (C - num_channel) * fillback_rate)` with `num_channel = ones / entries_per_unit`."""
    num_channel = ones / entries_per_unit
    return int(num_channel + (num_units - num_channel) * fillback_rate)


def activation_scores(
    model: nn.Module, groups: list[UnitGroup], batch: Mapping[str, torch.Tensor], criterion: str
) -> dict[str, torch.Tensor]:
    """Per-unit `l1` / `l2` / `saliency` scores of each group on one batch (`pixel_values`, `labels`)."""
    modules = dict(model.named_modules())
    captured: dict[str, torch.Tensor] = {}
    handles = []

    def capture(name: str, tensor: torch.Tensor) -> None:
        if criterion == "saliency":
            tensor.retain_grad()
        captured[name] = tensor

    for group in groups:
        module_name, side = group.activation
        if side == "in":
            hook = (lambda n: lambda mod, args: capture(n, args[0]))(group.name)
            handles.append(modules[module_name].register_forward_pre_hook(hook))
        else:
            hook = (lambda n: lambda mod, args, out: capture(n, out))(group.name)
            handles.append(modules[module_name].register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.set_grad_enabled(criterion == "saliency"):
            outputs = model(pixel_values=batch["pixel_values"], labels=batch.get("labels"))
            if criterion == "saliency":
                if outputs.loss is None:
                    raise ValueError("The saliency criterion needs `labels` in the batch.")
                outputs.loss.backward()
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    scores = {}
    for group in groups:
        a = captured[group.name].detach()
        if criterion == "l1":
            value = a.abs()
        elif criterion == "l2":
            value = a.square()
        else:
            value = (a * captured[group.name].grad).abs()
        per_unit = group.act_view(value.float())  # [..., units, d]
        scores[group.name] = per_unit.sum(-1).reshape(-1, group.num_units).sum(0).double().cpu()
    if criterion == "saliency":
        model.zero_grad(set_to_none=True)
    return scores


@torch.no_grad()
def refill_masks(
    model: nn.Module,
    groups: list[UnitGroup],
    magnitude: MaskSet,
    fillback_rate: float = 0.0,
    criterion: str = "l1",
    batch: Mapping[str, torch.Tensor] | None = None,
) -> tuple[MaskSet, dict[str, int]]:
    """Structured masks (weights + unit biases) from the magnitude masks; also `{group: units kept}`."""
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}.")
    if not 0.0 <= fillback_rate <= 1.0:
        raise ValueError(f"fillback_rate must be in [0, 1], got {fillback_rate}.")
    params = {name: p.detach() for name, p in model.named_parameters()}
    if criterion in ACTIVATION_CRITERIA:
        if batch is None:
            raise ValueError(f"criterion {criterion!r} needs a batch of training data.")
        with torch.enable_grad():
            act = activation_scores(model, groups, batch, criterion)
    masks: dict[str, torch.Tensor] = {}
    kept: dict[str, int] = {}
    for group in groups:
        m = {member.name: magnitude[member.name].to(params[member.name].device) for member in group.weights}
        ones = float(per_unit_sum(group, m).sum())
        keep = refill_keep_count(ones, group.unit_sizes(params), group.num_units, fillback_rate)
        if criterion == "remain":
            score = per_unit_sum(group, m)
        elif criterion == "magnitude":
            score = per_unit_sum(group, {n: params[n].abs() * m[n] for n in m})
        else:
            score = act[group.name]
        order = torch.argsort(score.cpu(), descending=True, stable=True)[:keep]
        keep_mask = torch.zeros(group.num_units, dtype=torch.bool)
        keep_mask[order] = True
        masks.update({n: v.cpu() for n, v in unit_mask(group, keep_mask, params).items()})
        kept[group.name] = keep
    return MaskSet(masks), kept
