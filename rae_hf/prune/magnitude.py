"""Global unstructured magnitude pruning (IMP; SLTH `pruning_model`, the seed's `vit_pruning_utils`)."""

from __future__ import annotations

import torch

from .masks import MaskSet


@torch.no_grad()
def global_magnitude_masks(params: dict[str, torch.Tensor], current: MaskSet, rate: float) -> MaskSet:
    """Remove `round(rate * kept)` of the still-kept entries of `current`, smallest |w| first, over all its tensors
    together (one global threshold). Ties are broken by position, so exactly that many go."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"rate must be in [0, 1), got {rate}.")
    names = list(current.masks)
    scores = torch.cat(
        [
            torch.where(current[n].to(params[n].device), params[n].detach().abs().float(), torch.inf).flatten()
            for n in names
        ]
    )
    kept = int(sum(int(current[n].sum()) for n in names))
    count = round(rate * kept)
    flat = torch.cat([current[n].flatten().to(scores.device) for n in names])
    if count > 0:
        order = torch.argsort(scores, stable=True)[:count]
        flat[order] = False
    masks, offset = {}, 0
    for n in names:
        size = current[n].numel()
        masks[n] = flat[offset : offset + size].view_as(current[n]).cpu()
        offset += size
    return MaskSet(masks)
