"""ViT variants with timm parameter names, SDPA attention, drop path and per-block head / MLP widths.

Parameter names follow timm's `VisionTransformer` (`cls_token`, `pos_embed`, `patch_embed.proj`, `blocks.N.norm1`,
`blocks.N.attn.qkv`, `blocks.N.attn.proj`, `blocks.N.norm2`, `blocks.N.mlp.fc1`, `blocks.N.mlp.fc2`, `norm`, `head`),
so a timm checkpoint maps one to one (under the `vit.` prefix of the classification model). Blocks may have different
head counts and MLP widths, so a physically pruned ("shrunk") model is still this class.

`pixel_values` are normalized with `config.image_mean` / `config.image_std` by the data pipeline (the transformers
convention). This file imports nothing from `rae_hf` (remote code).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput

from .configuration_vit_variant import ViTVariantConfig


class DropPath(nn.Module):
    """Stochastic depth: drop the residual branch per sample with probability `rate` (training only)."""

    def __init__(self, rate: float = 0.0):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens with a strided convolution (`patch_embed.proj`)."""

    def __init__(self, config: ViTVariantConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.proj = nn.Conv2d(config.num_channels, config.hidden_size, config.patch_size, stride=config.patch_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.proj(pixel_values).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with a fused `qkv` ([q | k | v] x head x head_dim rows) and `proj`."""

    def __init__(self, config: ViTVariantConfig, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = config.head_dim
        self.attn_implementation = config._attn_implementation or "sdpa"
        self.dropout = config.attention_probs_dropout_prob
        inner = num_heads * config.head_dim
        self.qkv = nn.Linear(config.hidden_size, 3 * inner, bias=config.qkv_bias)
        self.proj = nn.Linear(inner, config.hidden_size)
        self.proj_drop = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        if self.num_heads == 0:  # every head pruned: the branch adds its constant output bias
            return self.proj_drop(self.proj.bias.to(x.dtype).expand(batch, length, -1))
        qkv = self.qkv(x).view(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        dropout = self.dropout if self.training else 0.0
        if self.attn_implementation == "eager":
            weights = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)
            weights = F.dropout(weights.softmax(dim=-1), dropout, self.training)
            out = weights @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        out = out.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim)
        return self.proj_drop(self.proj(out))


class Mlp(nn.Module):
    """`fc1` -> activation -> `fc2`."""

    def __init__(self, config: ViTVariantConfig, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, hidden)
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(hidden, config.hidden_size)
        self.drop = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fc1.out_features == 0:  # every channel pruned: the branch adds its constant output bias
            return self.drop(self.fc2.bias.to(x.dtype).expand(*x.shape[:-1], -1))
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(GradientCheckpointingLayer):
    """Pre-norm transformer block; a branch with 0 heads / 0 MLP channels only adds its output bias (a shrunk block
    whose units were all pruned)."""

    def __init__(self, config: ViTVariantConfig, index: int, drop_path: float):
        super().__init__()
        heads, hidden = config.layer_heads(index), config.layer_intermediate_size(index)
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = Attention(config, heads)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = Mlp(config, hidden)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ViTVariantPreTrainedModel(PreTrainedModel):
    config_class = ViTVariantConfig
    base_model_prefix = "vit"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ("Block",)

    def _init_weights(self, module: nn.Module) -> None:
        """timm's init: truncated normal (std `initializer_range`) for linears and tokens, zero biases."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, ViTVariantModel):
            init.trunc_normal_(module.pos_embed, std=std)
            init.normal_(module.cls_token, std=1e-6)
            if module.mask_token is not None:
                init.zeros_(module.mask_token)


class ViTVariantModel(ViTVariantPreTrainedModel):
    """ViT backbone: patch + cls tokens, learned position embeddings, blocks, final norm. Pooled output = cls token."""

    def __init__(self, config: ViTVariantConfig):
        super().__init__(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_patches + 1, config.hidden_size))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size)) if config.use_mask_token else None
        self.patch_embed = PatchEmbed(config)
        self.pos_drop = nn.Dropout(config.hidden_dropout_prob)
        depth = config.num_hidden_layers
        rates = [config.drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(Block(config, i, rate) for i, rate in enumerate(rates))
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.patch_embed

    def interpolate_pos_embed(self, height: int, width: int) -> torch.Tensor:
        """Position embeddings for a `height` x `width` patch grid (bicubic resize of the trained grid)."""
        patch_pos = self.pos_embed[:, 1:]
        side = int(math.sqrt(patch_pos.shape[1]))
        if (height, width) == (side, side):
            return self.pos_embed
        grid = patch_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid.float(), size=(height, width), mode="bicubic", align_corners=False)
        patch_pos = grid.to(self.pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, height * width, -1)
        return torch.cat([self.pos_embed[:, :1], patch_pos], dim=1)

    def forward(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling | tuple:
        """`pixel_values` `[B, C, H, W]` (normalized); `bool_masked_pos` `[B, num_patches]` replaces those patch
        tokens by the mask token (needs `use_mask_token=True`); other sizes need `interpolate_pos_encoding=True`."""
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        height, width = pixel_values.shape[-2:]
        patch = self.config.patch_size
        if not interpolate_pos_encoding and (height, width) != (self.config.image_size, self.config.image_size):
            raise ValueError(
                f"Input size {height}x{width} differs from image_size {self.config.image_size}; pass "
                "interpolate_pos_encoding=True to resize the position embeddings."
            )
        x = self.patch_embed(pixel_values.to(self.patch_embed.proj.weight.dtype))
        if bool_masked_pos is not None:
            if self.mask_token is None:
                raise ValueError("bool_masked_pos needs a model built with use_mask_token=True.")
            x = torch.where(bool_masked_pos.unsqueeze(-1), self.mask_token.to(x.dtype), x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.pos_drop(x + self.interpolate_pos_embed(height // patch, width // patch))
        hidden_states = (x,) if output_hidden_states else None
        for block in self.blocks:
            x = block(x)
            if output_hidden_states:
                hidden_states += (x,)
        x = self.norm(x)
        if not return_dict:
            return (x, x[:, 0]) + ((hidden_states,) if output_hidden_states else ())
        return BaseModelOutputWithPooling(last_hidden_state=x, pooler_output=x[:, 0], hidden_states=hidden_states)


class ViTVariantForImageClassification(ViTVariantPreTrainedModel):
    """ViT backbone + linear `head` on the final-normed cls token; cross-entropy loss when `labels` are given."""

    def __init__(self, config: ViTVariantConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vit = ViTVariantModel(config)
        self.head = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        bool_masked_pos: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutput | tuple:
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.vit(
            pixel_values,
            bool_masked_pos=bool_masked_pos,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.head(outputs.pooler_output)
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        if not return_dict:
            output = (logits,) + ((outputs.hidden_states,) if outputs.hidden_states is not None else ())
            return ((loss,) + output) if loss is not None else output
        return ImageClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


__all__ = ["ViTVariantForImageClassification", "ViTVariantModel", "ViTVariantPreTrainedModel"]
