"""Which weights are pruned and which of them form removable units.

Targets are the `nn.Linear` modules whose qualified name ends with one of `target_suffixes` (ViT default: `attn.qkv`,
`attn.proj`, `mlp.fc1`, `mlp.fc2`). Structured units group the entries that must go together for a block to shrink:
- a head of an attention module: its rows in each of the q / k / v blocks of `qkv` (+ those bias entries) and its
  columns of `proj`;
- an MLP channel: a row of `fc1` (+ its bias entry) and a column of `fc2`;
- any other targeted Linear: its output rows (+ bias entries), as SLTH's per-layer channels.
A unit view puts the unit axis first (`[units, ...]`); views share storage, so writing into one edits the tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

DEFAULT_TARGETS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")

UnitView = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Member:
    """One tensor of a unit group: parameter name and the view putting the unit axis first."""

    name: str
    view: UnitView


@dataclass
class UnitGroup:
    """Units that are kept or removed together (the heads of one attention, the channels of one MLP, ...).

    `weights` are the targeted weight tensors the units span; `biases` the bias entries that belong to a unit (masked
    with it); `activation` names the module whose *input* (`"in"`) or *output* (`"out"`) carries one slice per unit,
    used by the activation criteria; `act_view` reshapes that activation `[..., F]` to `[..., units, -1]`.
    """

    name: str
    kind: str  # "heads", "mlp" or "rows"
    num_units: int
    weights: list[Member] = field(default_factory=list)
    biases: list[Member] = field(default_factory=list)
    activation: tuple[str, str] = ("", "in")
    act_view: UnitView = lambda a: a.unsqueeze(-1)

    def unit_sizes(self, params: dict[str, torch.Tensor]) -> int:
        """Weight entries per unit over all member weights."""
        return sum(member.view(params[member.name])[0].numel() for member in self.weights)


def find_targets(model: nn.Module, target_suffixes: Sequence[str] = DEFAULT_TARGETS) -> list[str]:
    """Qualified names of the targeted `nn.Linear` modules (a clear error when none matches)."""
    names = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and any(name == s or name.endswith("." + s) for s in target_suffixes)
    ]
    if not names:
        raise ValueError(
            f"No nn.Linear module of the model ends with any of the prune targets {list(target_suffixes)}."
        )
    return names


def _heads_views(num_heads: int, head_dim: int) -> tuple[UnitView, UnitView, UnitView, UnitView]:
    """Unit views of a head: qkv weight `[3HD, in]`, qkv bias `[3HD]`, proj weight `[out, HD]`, activation."""
    return (
        lambda w: w.view(3, num_heads, head_dim, -1).transpose(0, 1),
        lambda b: b.view(3, num_heads, head_dim).transpose(0, 1),
        lambda w: w.view(w.shape[0], num_heads, head_dim).transpose(0, 1),
        lambda a: a.unflatten(-1, (num_heads, head_dim)),
    )


def unit_groups(model: nn.Module, target_suffixes: Sequence[str] = DEFAULT_TARGETS) -> list[UnitGroup]:
    """The structured unit groups over the targeted Linears of `model` (see the module docstring)."""
    targets = set(find_targets(model, target_suffixes))
    modules = dict(model.named_modules())
    groups: list[UnitGroup] = []
    covered: set[str] = set()
    for name, module in modules.items():
        qkv, proj = modules.get(f"{name}.qkv"), modules.get(f"{name}.proj")
        if getattr(module, "num_heads", 0) > 0 and hasattr(module, "head_dim") and qkv is not None and proj is not None:
            members = [m for m in (f"{name}.qkv", f"{name}.proj") if m in targets]
            if not members:
                continue
            w_qkv, b_qkv, w_proj, act = _heads_views(module.num_heads, module.head_dim)
            group = UnitGroup(f"{name}", "heads", module.num_heads, activation=(f"{name}.proj", "in"), act_view=act)
            if f"{name}.qkv" in targets:
                group.weights.append(Member(f"{name}.qkv.weight", w_qkv))
                if qkv.bias is not None:
                    group.biases.append(Member(f"{name}.qkv.bias", b_qkv))
            if f"{name}.proj" in targets:
                group.weights.append(Member(f"{name}.proj.weight", w_proj))
            groups.append(group)
            covered.update(members)
        fc1, fc2 = modules.get(f"{name}.fc1"), modules.get(f"{name}.fc2")
        if isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear) and fc1.out_features == fc2.in_features > 0:
            members = [m for m in (f"{name}.fc1", f"{name}.fc2") if m in targets]
            if not members:
                continue
            group = UnitGroup(f"{name}", "mlp", fc1.out_features, activation=(f"{name}.fc2", "in"))
            if f"{name}.fc1" in targets:
                group.weights.append(Member(f"{name}.fc1.weight", lambda w: w))
                if fc1.bias is not None:
                    group.biases.append(Member(f"{name}.fc1.bias", lambda b: b))
            if f"{name}.fc2" in targets:
                group.weights.append(Member(f"{name}.fc2.weight", lambda w: w.t()))
            groups.append(group)
            covered.update(members)
    for name in sorted(targets - covered):
        linear = modules[name]
        if linear.weight.numel() == 0:
            continue
        group = UnitGroup(name, "rows", linear.out_features, activation=(name, "out"))
        group.weights.append(Member(f"{name}.weight", lambda w: w))
        if linear.bias is not None:
            group.biases.append(Member(f"{name}.bias", lambda b: b))
        groups.append(group)
    return groups


def unit_mask(group: UnitGroup, keep: torch.Tensor, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Boolean masks (weights and unit biases) keeping exactly the units where `keep` `[units]` is True."""
    masks = {}
    for member in group.weights + group.biases:
        mask = torch.zeros_like(params[member.name], dtype=torch.bool)
        view = member.view(mask)
        view[keep.to(mask.device)] = True
        masks[member.name] = mask
    return masks


def per_unit_sum(group: UnitGroup, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of each unit's entries over the member weights: `[units]` (float64 for exact counts)."""
    total = None
    for member in group.weights:
        value = member.view(tensors[member.name]).reshape(group.num_units, -1).double().sum(1)
        total = value if total is None else total + value
    return total
