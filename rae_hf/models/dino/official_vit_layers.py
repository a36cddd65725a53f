"""The DINOv2 training code's forms of three ViT details, for transformers' DINOv2 backbones (with or without
registers), switched on by `DinoConfig` (see `apply_official_forms` and `official_backbone_init`):

- position embeddings of another grid size are resized bicubically with `scale_factor = (grid + offset) / M`
  (`interpolate_offset`, 0.1 in DINOv2; antialias off) instead of to the exact size;
- stochastic depth in its batch-subset form: for each residual branch a random subset of `max(int(B (1 - p)), 1)`
  samples goes through the branch, whose output is added with weight `B / subset` (the other samples skip it);
- a fresh backbone starts with CLS (and register) tokens ~ N(0, 1e-6) and PyTorch's default patch-embedding conv.

The layers keep their parameter names (only the class of a module changes), so checkpoints are unaffected. Like
`modeling_dino.py`, this file imports nothing from `rae_hf`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.models.dinov2.modeling_dinov2 import Dinov2Embeddings, Dinov2Layer
from transformers.models.dinov2_with_registers.modeling_dinov2_with_registers import (
    Dinov2WithRegistersEmbeddings,
    Dinov2WithRegistersLayer,
)

DROP_PATH_MODES = ("batch_subset", "per_sample")
BACKBONE_INITS = ("official", "backbone")


def offset_interpolate_pos_encoding(
    position_embeddings: torch.Tensor, grid_height: int, grid_width: int, offset: float
) -> torch.Tensor:
    """`[1, 1 + M*M, D]` CLS + square patch position embeddings -> `[1, 1 + h*w, D]`: bicubic (no antialias) with
    scale factors `((h + offset) / M, (w + offset) / M)`, computed in fp32 and cast back."""
    dim = position_embeddings.shape[-1]
    side = math.isqrt(position_embeddings.shape[1] - 1)
    patch = position_embeddings[:, 1:].float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    scale = ((grid_height + offset) / side, (grid_width + offset) / side)
    patch = F.interpolate(patch, scale_factor=scale, mode="bicubic", antialias=False)
    if tuple(patch.shape[-2:]) != (grid_height, grid_width):
        got = tuple(patch.shape[-2:])
        raise ValueError(f"interpolate_offset={offset} gives a {got} grid, not ({grid_height}, {grid_width}).")
    patch = patch.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat([position_embeddings[:, :1].float(), patch], dim=1).to(position_embeddings.dtype)


class _OffsetInterpolation:
    """Embeddings whose `interpolate_pos_encoding` is `offset_interpolate_pos_encoding` (`self.interpolate_offset`)."""

    interpolate_offset: float

    def interpolate_pos_encoding(self, embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
        if embeddings.shape[1] == self.position_embeddings.shape[1] and height == width:
            return self.position_embeddings
        patch_height, patch_width = self.patch_embeddings.patch_size
        return offset_interpolate_pos_encoding(
            self.position_embeddings, height // patch_height, width // patch_width, self.interpolate_offset
        )


def subset_residual(x: torch.Tensor, rate: float, branch: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """`x + (B / n) * branch(x[S])` on a random subset S of `n = max(int(B (1 - rate)), 1)` rows, `x` elsewhere;
    `branch` runs on the n rows only."""
    batch = x.shape[0]
    kept = max(int(batch * (1 - rate)), 1)
    index = torch.randperm(batch, device=x.device)[:kept]
    residual = branch(x[index]).to(x.dtype)
    return torch.index_add(x.flatten(1), 0, index, residual.flatten(1), alpha=batch / kept).view_as(x)


class _BatchSubsetDropPath:
    """DINOv2 layers whose stochastic depth (rate of `self.drop_path`) is the batch-subset form in training."""

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        rate = float(getattr(self.drop_path, "drop_prob", 0.0))
        if not (self.training and rate > 0.0):
            return super().forward(hidden_states, attention_mask, **kwargs)
        if attention_mask is not None:
            raise ValueError("The batch-subset drop path takes no attention_mask (DINO crops are not padded).")

        def attention(x: torch.Tensor) -> torch.Tensor:
            return self.layer_scale1(self.attention(self.norm1(x), **kwargs)[0])

        def mlp(x: torch.Tensor) -> torch.Tensor:
            return self.layer_scale2(self.mlp(self.norm2(x)))

        return subset_residual(subset_residual(hidden_states, rate, attention), rate, mlp)


class OffsetDinov2Embeddings(_OffsetInterpolation, Dinov2Embeddings):
    pass


class OffsetDinov2WithRegistersEmbeddings(_OffsetInterpolation, Dinov2WithRegistersEmbeddings):
    pass


class BatchSubsetDinov2Layer(_BatchSubsetDropPath, Dinov2Layer):
    pass


class BatchSubsetDinov2WithRegistersLayer(_BatchSubsetDropPath, Dinov2WithRegistersLayer):
    pass


_OFFSET_EMBEDDINGS = {
    Dinov2Embeddings: OffsetDinov2Embeddings,
    Dinov2WithRegistersEmbeddings: OffsetDinov2WithRegistersEmbeddings,
}
_SUBSET_LAYERS = {Dinov2Layer: BatchSubsetDinov2Layer, Dinov2WithRegistersLayer: BatchSubsetDinov2WithRegistersLayer}


def apply_official_forms(backbone: nn.Module, interpolate_offset: float | None, drop_path_mode: str) -> None:
    """Switch the DINOv2 modules of `backbone` in place to the offset interpolation (`interpolate_offset` not
    None/0) and to the batch-subset drop path (`drop_path_mode="batch_subset"`). Other backbones keep their own."""
    if drop_path_mode not in DROP_PATH_MODES:
        raise ValueError(f"drop_path_mode={drop_path_mode!r} must be one of {DROP_PATH_MODES}.")
    for module in backbone.modules():
        if interpolate_offset and type(module) in _OFFSET_EMBEDDINGS:
            module.__class__ = _OFFSET_EMBEDDINGS[type(module)]
            module.interpolate_offset = float(interpolate_offset)
        elif drop_path_mode == "batch_subset" and type(module) in _SUBSET_LAYERS:
            module.__class__ = _SUBSET_LAYERS[type(module)]


@torch.no_grad()
def official_backbone_init(backbone: nn.Module) -> None:
    """The DINOv2 init where it differs from transformers': CLS and register tokens ~ N(0, 1e-6), the patch
    embedding conv at PyTorch's default (kaiming-uniform a=sqrt(5), bias U(+-1/sqrt(fan_in))). Loaded tensors are
    left alone (transformers' init functions skip them)."""
    for module in backbone.modules():
        if not isinstance(module, tuple(_OFFSET_EMBEDDINGS)):
            continue
        init.normal_(module.cls_token, std=1e-6)
        if getattr(module, "register_tokens", None) is not None:
            init.normal_(module.register_tokens, std=1e-6)
        conv = module.patch_embeddings.projection
        init.kaiming_uniform_(conv.weight, a=math.sqrt(5))
        if conv.bias is not None:
            bound = 1.0 / math.sqrt(conv.weight[0].numel())
            init.uniform_(conv.bias, -bound, bound)
