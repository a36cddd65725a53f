"""Pruning masks held next to the model (not as `torch.nn.utils.prune` re-parametrizations).

`torch.nn.utils.prune` renames each pruned weight to `weight_orig` + a `weight_mask` buffer and recomputes
`weight = weight_orig * weight_mask` in a forward pre-hook: the state dict no longer matches the model class (so
`save_pretrained` / `from_pretrained` / shrinking need to undo it), and the optimizer holds `weight_orig`. Keeping
the weights themselves zero gives the same effective weights and gradients with a clean state dict:
- before each optimizer step the gradients of pruned entries are zeroed (`mask_gradients`), so momentum never
  builds up for them, exactly as the gradient of `weight_orig * mask` is zero there;
- after each step the pruned entries are set to zero again (`apply`), undoing weight decay on them.
"""

from __future__ import annotations

import torch
from torch import nn


class MaskSet:
    """Boolean masks by parameter name (`True` = kept); parameters without a mask are dense."""

    def __init__(self, masks: dict[str, torch.Tensor] | None = None):
        self.masks: dict[str, torch.Tensor] = {name: mask.bool() for name, mask in (masks or {}).items()}
        self._params: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def __len__(self) -> int:
        return len(self.masks)

    def __contains__(self, name: str) -> bool:
        return name in self.masks

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.masks[name]

    def items(self):
        return self.masks.items()

    def bind(self, model: nn.Module) -> MaskSet:
        """Pair each mask with its parameter (moved to its device, as the parameter's dtype) for the hot loop."""
        params = dict(model.named_parameters())
        missing = [name for name in self.masks if name not in params]
        if missing:
            raise KeyError(f"Masks for parameters the model does not have: {missing[:5]}")
        for name, mask in self.masks.items():
            if mask.shape != params[name].shape:
                raise ValueError(
                    f"Mask of {name} has shape {tuple(mask.shape)}, the parameter {tuple(params[name].shape)}."
                )
        self._params = [(params[n], m.to(params[n].device, params[n].dtype)) for n, m in self.masks.items()]
        return self

    def _bound(self, model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if self._params is None or (self._params and self._params[0][0] is not _first_param(model, self.masks)):
            self.bind(model)
        return self._params

    @torch.no_grad()
    def apply(self, model: nn.Module) -> None:
        """Zero the pruned entries of the model's parameters (in place, no host sync)."""
        for param, mask in self._bound(model):
            param.mul_(mask)

    @torch.no_grad()
    def mask_gradients(self, model: nn.Module) -> None:
        """Zero the gradients of pruned entries."""
        for param, mask in self._bound(model):
            if param.grad is not None:
                param.grad.mul_(mask)

    def union(self, other: MaskSet) -> MaskSet:
        """Entry-wise OR (parameters in one set only keep that set's mask)."""
        names = set(self.masks) | set(other.masks)
        return MaskSet(
            {
                n: self.masks[n] | other.masks[n] if n in self.masks and n in other.masks else
                (self.masks[n] if n in self.masks else other.masks[n])
                for n in names
            }
        )  # fmt: skip

    def minus(self, other: MaskSet) -> MaskSet:
        """Entries kept here but not in `other` (`self & ~other`)."""
        return MaskSet({n: m & ~other.masks[n] if n in other.masks else m.clone() for n, m in self.masks.items()})

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat tensor dict (uint8 masks; safetensors-friendly)."""
        return {name: mask.to(torch.uint8).cpu().contiguous() for name, mask in self.masks.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.masks = {name: value.bool() for name, value in state.items()}
        self._params = None

    def density(self, names: list[str] | None = None) -> float:
        """Kept fraction over the masked tensors (or over `names`)."""
        names = list(self.masks) if names is None else names
        kept = sum(int(self.masks[n].sum()) for n in names)
        total = sum(self.masks[n].numel() for n in names)
        return kept / total if total else 1.0


def _first_param(model: nn.Module, masks: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """The model parameter of the first mask (to notice that the bound model changed)."""
    first = next(iter(masks), None)
    return None if first is None else model.get_parameter(first)


def dense_masks(model: nn.Module, names: list[str]) -> MaskSet:
    """All-True masks of the named parameters."""
    params = dict(model.named_parameters())
    return MaskSet({name: torch.ones_like(params[name], dtype=torch.bool) for name in names})
