"""Sparsity, size and cost of a (masked) model, as logged per pruning round."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..models.vit import ViTVariantForImageClassification, ViTVariantModel
from .shrink import count_parameters, removed_units, shrunk_config, vit_flops
from .structure import DEFAULT_TARGETS, unit_groups


@torch.no_grad()
def pruning_stats(model: nn.Module, target_suffixes: Sequence[str] = DEFAULT_TARGETS) -> dict[str, float | int]:
    """`weight_sparsity` (zero fraction of the targeted weights), nonzero/total params; for ViT variants also
    `head_sparsity` / `channel_sparsity` (removable units), `params_shrunk` and GFLOPs dense / shrunk."""
    params = dict(model.named_parameters())
    names = [member.name for group in unit_groups(model, target_suffixes) for member in group.weights]
    zeros = sum(int((params[n] == 0).sum()) for n in names)
    total = sum(params[n].numel() for n in names)
    stats: dict[str, float | int] = {
        "weight_sparsity": zeros / total,
        "params_total": count_parameters(model),
        "params_nonzero": count_parameters(model, nonzero=True),
    }
    if isinstance(model, (ViTVariantForImageClassification, ViTVariantModel)):
        units = removed_units(model)
        heads = [h for h, _ in units]
        channels = [c for _, c in units]
        stats["head_sparsity"] = sum(int(h.sum()) for h in heads) / max(sum(h.numel() for h in heads), 1)
        stats["channel_sparsity"] = sum(int(c.sum()) for c in channels) / max(sum(c.numel() for c in channels), 1)
        config = shrunk_config(model)
        with torch.device("meta"):
            small = type(model)(config)
        stats["params_shrunk"] = count_parameters(small)
        stats["gflops_dense"] = vit_flops(model.config) / 1e9
        stats["gflops_shrunk"] = vit_flops(config) / 1e9
    return stats
