"""Structured and unstructured pruning of ViT-style models: masks, global magnitude pruning (IMP), Refill, RSST,
weight rewinding and physical shrinking to a smaller dense model (`python -m rae_hf.prune shrink SRC DST`)."""

from .callbacks import (
    PRUNING_CALLBACKS,
    MagnitudePruningCallback,
    PruningCallback,
    RefillCallback,
    RoundMasks,
    RSSTCallback,
)
from .magnitude import global_magnitude_masks
from .masks import MaskSet, dense_masks
from .refill import CRITERIA, refill_keep_count, refill_masks
from .rewind import RewindCaptureCallback, capture_state, load_rewind_state, rewind, save_rewind_state
from .rsst import RSST_CURVES, rsst_lambda
from .shrink import count_parameters, removed_units, shrink_model, shrunk_config, vit_flops
from .stats import pruning_stats
from .structure import DEFAULT_TARGETS, UnitGroup, find_targets, unit_groups

__all__ = [
    "CRITERIA",
    "DEFAULT_TARGETS",
    "PRUNING_CALLBACKS",
    "RSST_CURVES",
    "MagnitudePruningCallback",
    "MaskSet",
    "PruningCallback",
    "RSSTCallback",
    "RefillCallback",
    "RewindCaptureCallback",
    "RoundMasks",
    "UnitGroup",
    "capture_state",
    "count_parameters",
    "dense_masks",
    "find_targets",
    "global_magnitude_masks",
    "load_rewind_state",
    "pruning_stats",
    "refill_keep_count",
    "refill_masks",
    "removed_units",
    "rewind",
    "rsst_lambda",
    "save_rewind_state",
    "shrink_model",
    "shrunk_config",
    "unit_groups",
    "vit_flops",
]
