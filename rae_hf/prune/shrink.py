"""Physical shrinking: a structurally pruned ViT variant -> a smaller dense `ViTVariantForImageClassification`.

Written by hand rather than with Torch-Pruning (DepGraph): the coupling in these blocks is fixed and small (a head =
its q/k/v rows + `proj` columns, an MLP channel = an `fc1` row + an `fc2` column), the result must be this same HF
class with per-block widths in its config (so `from_pretrained` loads it), and removed units' constant outputs must
be folded into the next bias, which Torch-Pruning does not do. Doing it here needs no extra dependency or tracing.

A unit is removable when its output is a constant: a head whose `proj` columns are zero, or whose v rows are zero
(softmax weights sum to 1, so the head outputs its v bias); an MLP channel whose `fc2` column or `fc1` row is zero
(it outputs `act(b)`). The constant's contribution goes into `proj.bias` / `fc2.bias`, so logits are unchanged.
A block whose units are all removed keeps a zero-width branch that adds its (folded) output bias.
"""

from __future__ import annotations

import copy

import torch
from transformers.activations import ACT2FN

from ..models.vit import ViTVariantConfig, ViTVariantForImageClassification, ViTVariantModel


def _heads_removed(attn) -> torch.Tensor:
    """`[heads]` True where the head's output is constant (see the module docstring)."""
    h, d = attn.num_heads, attn.head_dim
    qkv = attn.qkv.weight.view(3, h, d, -1)
    proj_zero = attn.proj.weight.view(attn.proj.weight.shape[0], h, d).eq(0).all(0).all(-1)
    v_zero = qkv[2].eq(0).flatten(1).all(1)
    return proj_zero | v_zero


def _channels_removed(mlp) -> torch.Tensor:
    """`[channels]` True where the MLP channel's output is constant."""
    return mlp.fc2.weight.eq(0).all(0) | mlp.fc1.weight.eq(0).all(1)


def removed_units(model: ViTVariantModel | ViTVariantForImageClassification) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per block `(heads_removed, channels_removed)` boolean vectors."""
    backbone = getattr(model, "vit", model)
    return [(_heads_removed(block.attn), _channels_removed(block.mlp)) for block in backbone.blocks]


def _kept(removed: torch.Tensor) -> torch.Tensor:
    """Indices of the kept units."""
    return (~removed).nonzero().flatten()


def shrunk_config(model) -> ViTVariantConfig:
    """The config of `shrink_model(model)` (per-block head counts and MLP widths)."""
    config = copy.deepcopy(model.config)
    heads, widths = [], []
    for h_removed, c_removed in removed_units(model):
        heads.append(int((~h_removed).sum()))
        widths.append(int((~c_removed).sum()))
    config.num_attention_heads, config.intermediate_size = heads, widths
    return config


@torch.no_grad()
def shrink_model(model: ViTVariantForImageClassification | ViTVariantModel):
    """A smaller model of the same class whose outputs equal `model`'s (removed units dropped, constants folded)."""
    config = shrunk_config(model)
    small = type(model)(config).to(next(model.parameters()).device, next(model.parameters()).dtype).eval()
    source_state = model.state_dict()
    small.load_state_dict({k: v for k, v in source_state.items() if ".blocks." not in f".{k}"}, strict=False)
    big_blocks = getattr(model, "vit", model).blocks
    small_blocks = getattr(small, "vit", small).blocks
    act = ACT2FN[model.config.hidden_act]
    for big, new, (h_removed, c_removed) in zip(big_blocks, small_blocks, removed_units(model), strict=True):
        new.norm1.load_state_dict(big.norm1.state_dict())
        new.norm2.load_state_dict(big.norm2.state_dict())
        _copy_attention(big.attn, new.attn, h_removed)
        _copy_mlp(big.mlp, new.mlp, c_removed, act)
    return small


def _copy_attention(big, new, removed: torch.Tensor) -> None:
    h, d = big.num_heads, big.head_dim
    kept = _kept(removed)
    qkv_w = big.qkv.weight.view(3, h, d, -1)
    new.qkv.weight.copy_(qkv_w[:, kept].reshape(new.qkv.weight.shape))
    proj_w = big.proj.weight.view(-1, h, d)
    new.proj.weight.copy_(proj_w[:, kept].reshape(new.proj.weight.shape))
    bias = big.proj.bias.double().clone()
    if big.qkv.bias is not None:
        qkv_b = big.qkv.bias.view(3, h, d)
        new.qkv.bias.copy_(qkv_b[:, kept].reshape(-1))
        for head in removed.nonzero().flatten().tolist():  # constant output v_bias -> proj
            bias += proj_w[:, head].double() @ qkv_b[2, head].double()
    new.proj.bias.copy_(bias)


def _copy_mlp(big, new, removed: torch.Tensor, act) -> None:
    kept = _kept(removed)
    new.fc1.weight.copy_(big.fc1.weight[kept])
    new.fc1.bias.copy_(big.fc1.bias[kept])
    new.fc2.weight.copy_(big.fc2.weight[:, kept])
    bias = big.fc2.bias.double().clone()
    gone = removed.nonzero().flatten()
    if gone.numel():  # constant output act(b1) of each removed channel -> fc2 bias
        bias += big.fc2.weight[:, gone].double() @ act(big.fc1.bias[gone].double())
    new.fc2.bias.copy_(bias)


def vit_flops(config: ViTVariantConfig, image_size: int | None = None) -> int:
    """Forward FLOPs per image (multiply-add = 2) of the linear layers, attention products, patch embedding, head."""
    image_size = image_size or config.image_size
    patches = (image_size // config.patch_size) ** 2
    tokens, dim = patches + 1, config.hidden_size
    flops = 2 * patches * dim * config.num_channels * config.patch_size**2
    for index in range(config.num_hidden_layers):
        inner = config.layer_heads(index) * config.head_dim
        flops += 2 * tokens * dim * 3 * inner + 2 * 2 * tokens * tokens * inner + 2 * tokens * inner * dim
        flops += 2 * 2 * tokens * dim * config.layer_intermediate_size(index)
    return flops + 2 * dim * max(config.num_labels, 0)


def count_parameters(model: torch.nn.Module, nonzero: bool = False) -> int:
    """Parameters of `model` (only the nonzero ones with `nonzero=True`)."""
    if nonzero:
        return sum(int(p.count_nonzero()) for p in model.parameters())
    return sum(p.numel() for p in model.parameters())
