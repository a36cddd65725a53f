"""JiT: a plain ViT that predicts clean pixels from noisy pixels (Li & He, "Back to Basics", arXiv 2511.13720).

Conventions (the paper's): `t` in [0, 1] with t = 1 the clean image; images in [-1, 1]; class label `num_classes` is
the null class. Parameter names equal the official code's, so an official state dict loads after stripping `net.`.

Like `configuration_jit.py`, this file imports nothing from `rae_hf` so that `save_pretrained` can copy it next to
the weights and a pushed model loads with `trust_remote_code=True` anywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput

from .configuration_jit import JiTConfig


@dataclass
class JiTOutput(ModelOutput):
    """prediction: `[B, C, H, W]` network output in image space (the clean image for `prediction_type="x"`)."""

    prediction: torch.FloatTensor | None = None


def sincos_position_embedding_2d(embed_dim: int, grid_size: int) -> torch.Tensor:
    """Fixed `[1, grid*grid, embed_dim]` embedding: first half encodes the column, second half the row; each half is
    `[sin(pos * w_k) for all k, cos(pos * w_k) for all k]` with `w_k = 10000^(-k / (D/4))`. Tokens are row-major."""
    quarter = embed_dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    index = torch.arange(grid_size * grid_size, dtype=torch.float64)
    rows, cols = torch.div(index, grid_size, rounding_mode="floor"), index % grid_size

    def encode(positions: torch.Tensor) -> torch.Tensor:
        angles = positions[:, None] * omega[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(cols), encode(rows)], dim=1).float().unsqueeze(0)


def rope_tables_2d(head_dim: int, grid_size: int, theta: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """`cos`, `sin` of shape `[grid*grid, head_dim]`: first half of the head rotates by the row index, second half by
    the column index; each half uses `f_j = theta^(-2j/d')` (d' = head_dim/2), every frequency twice in a row."""
    half = head_dim // 2
    freqs = theta ** (-torch.arange(0, half, 2, dtype=torch.float32, device=device) / half)
    freqs = freqs.repeat_interleave(2)  # interleaved pairs (a0, b0, a1, b1, ...)
    index = torch.arange(grid_size * grid_size, device=device)
    rows, cols = torch.div(index, grid_size, rounding_mode="floor").float(), (index % grid_size).float()
    angles = torch.cat([rows[:, None] * freqs, cols[:, None] * freqs], dim=1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`x * cos + rot(x) * sin` with `rot` mapping each consecutive pair (a, b) to (-b, a); `x`: `[B, heads, L, D]`."""
    pairs = x.unflatten(-1, (-1, 2))
    rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: `x * (1 + scale) + shift`, per sample."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class JiTRMSNorm(nn.Module):
    """RMSNorm computed in fp32 with a learned scale (init 1)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x32 * self.weight.float()).to(x.dtype)


class JiTTimestepEmbedder(nn.Module):
    """t in [0, 1] (not x1000) -> 256 sinusoidal features `[cos, sin]` -> Linear -> SiLU -> Linear."""

    frequency_size = 256

    def __init__(self, hidden_size: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(self.frequency_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )
        for layer in (self.mlp[0], self.mlp[2]):
            layer._jit_init_std = True

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.frequency_size // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


class JiTLabelEmbedder(nn.Module):
    """Class table with `num_classes + 1` rows; the last row is the null class (label dropout happens in training)."""

    def __init__(self, num_classes: int, hidden_size: int):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(labels)


class JiTPatchEmbed(nn.Module):
    """Bottleneck patch embedding: p x p conv (no bias) to `bottleneck_dim`, then 1x1 conv to the width."""

    def __init__(self, config: JiTConfig):
        super().__init__()
        p = config.patch_size
        self.proj1 = nn.Conv2d(config.num_channels, config.bottleneck_dim, p, stride=p, bias=False)
        self.proj2 = nn.Conv2d(config.bottleneck_dim, config.hidden_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj2(self.proj1(x)).flatten(2).transpose(1, 2)  # row-major tokens


class JiTAttention(nn.Module):
    """Fused-qkv attention with per-head RMSNorm on q, k and 2-D RoPE; SDPA, or fp32 eager math (official style)."""

    def __init__(self, config: JiTConfig, dropout: float):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.q_norm = JiTRMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = JiTRMSNorm(self.head_dim, config.rms_norm_eps)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = apply_rope(self.q_norm(q), cos, sin), apply_rope(self.k_norm(k), cos, sin)
        p_drop = self.config.attention_dropout if self.training else 0.0
        if self.config._attn_implementation == "eager":
            out = eager_attention(q, k, v, p_drop, self.training)
        else:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p_drop)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(batch, length, width)))


def eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p_drop: float, training: bool) -> torch.Tensor:
    """The official computation: logits, softmax and the weighted sum in fp32 with autocast off."""
    with torch.autocast(device_type=q.device.type, enabled=False):
        weights = (q.float() @ k.float().transpose(-2, -1)) * q.shape[-1] ** -0.5
        weights = F.dropout(weights.softmax(dim=-1), p_drop, training)
        return (weights @ v.float()).to(v.dtype)


class JiTSwiGLU(nn.Module):
    """`w3(dropout(SiLU(a) * b))` with `[a, b] = w12(x)`."""

    def __init__(self, config: JiTConfig, dropout: float):
        super().__init__()
        self.w12 = nn.Linear(config.hidden_size, 2 * config.intermediate_size)
        self.w3 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.w3(self.drop(F.silu(gate) * value))


class JiTBlock(GradientCheckpointingLayer):
    """adaLN-Zero block: `x += g_a * Attn(mod(norm1 x))`, `x += g_m * SwiGLU(mod(norm2 x))`."""

    def __init__(self, config: JiTConfig, dropout: float):
        super().__init__()
        d = config.hidden_size
        self.norm1 = JiTRMSNorm(d, config.rms_norm_eps)
        self.attn = JiTAttention(config, dropout)
        self.norm2 = JiTRMSNorm(d, config.rms_norm_eps)
        self.mlp = JiTSwiGLU(config, dropout)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.adaLN_modulation[1]._jit_zero_init = True

    def forward(self, x: torch.Tensor, c: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + gate_a.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_a, scale_a), cos, sin)
        return x + gate_m.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_m, scale_m))


class JiTFinalLayer(nn.Module):
    """RMSNorm, adaLN shift/scale (no gate), Linear to `p*p*C` values per token."""

    def __init__(self, config: JiTConfig):
        super().__init__()
        d = config.hidden_size
        self.norm_final = JiTRMSNorm(d, config.rms_norm_eps)
        self.linear = nn.Linear(d, config.patch_size**2 * config.num_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        self.linear._jit_zero_init = True
        self.adaLN_modulation[1]._jit_zero_init = True

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class JiTPreTrainedModel(PreTrainedModel):
    config_class = JiTConfig
    config: JiTConfig
    base_model_prefix = "jit"
    main_input_name = "x"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ("JiTBlock",)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Published init: xavier-uniform linears (bias 0); adaLN and final linears zero; N(0, 0.02) class table,
        time-MLP weights and in-context embedding; patch convs xavier on the 2-D-flattened weight; fixed sin-cos."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            if getattr(module, "_jit_zero_init", False):
                init.zeros_(module.weight)
            elif getattr(module, "_jit_init_std", False):
                init.normal_(module.weight, std=std)
            else:
                init.xavier_uniform_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, std=std)
        elif isinstance(module, nn.Conv2d):
            fan_out, fan_in = module.weight.shape[0], module.weight[0].numel()
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            init.uniform_(module.weight, -bound, bound)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, JiTRMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, JiTModel):
            init.copy_(module.pos_embed, sincos_position_embedding_2d(self.config.hidden_size, self.config.grid_size))
            if module.in_context_posemb is not None:
                init.normal_(module.in_context_posemb, std=std)


class JiTModel(JiTPreTrainedModel):
    """The JiT denoiser. `forward(x, t, class_labels)`: noisy images `[B, C, H, W]` in the model's space, `t` `[B]` in
    [0, 1] (1 = clean), labels `[B]` (`num_classes` = unconditional; `None` = all unconditional) -> `JiTOutput`."""

    def __init__(self, config: JiTConfig):
        super().__init__(config)
        d, depth = config.hidden_size, config.num_hidden_layers
        self.t_embedder = JiTTimestepEmbedder(d)  # registration order = the official state-dict order
        self.y_embedder = JiTLabelEmbedder(config.num_classes, d)
        self.x_embedder = JiTPatchEmbed(config)
        pos = sincos_position_embedding_2d(d, config.grid_size)
        self.pos_embed = nn.Parameter(pos, requires_grad=False)  # frozen, but stored (official layout)
        n_ctx = config.num_in_context_tokens
        self.in_context_posemb = nn.Parameter(torch.zeros(1, n_ctx, d)) if n_ctx else None
        lo, hi = depth // 4, 3 * (depth // 4)
        self.blocks = nn.ModuleList(JiTBlock(config, config.dropout if lo <= i < hi else 0.0) for i in range(depth))
        self.final_layer = JiTFinalLayer(config)
        self._rope_cache: dict[tuple, tuple[torch.Tensor, ...]] = {}
        self.post_init()

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, with the fixed sin-cos position embedding frozen again (loading
        re-creates parameters with `requires_grad=True`: it would enter the optimizer and the EMAs)."""
        loaded = super().from_pretrained(*args, **kwargs)
        (loaded[0] if isinstance(loaded, tuple) else loaded).pos_embed.requires_grad_(False)
        return loaded

    def get_input_embeddings(self) -> nn.Module:
        """The patch embedding (Accelerate's FSDP2 wrapping asks for it and shards it as its own unit)."""
        return self.x_embedder

    def rope(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """RoPE `cos`, `sin` of the image tokens, then of [class tokens (identity rotation), image tokens]; built once
        per (grid, device) and cached outside the state dict (no buffers, as in the official checkpoints)."""
        key = (self.config.grid_size, self.config.num_in_context_tokens, str(device))
        if key not in self._rope_cache:
            with torch.inference_mode(False), torch.no_grad():  # plain tensors, usable in training after sampling
                head_dim = self.config.hidden_size // self.config.num_attention_heads
                cos, sin = rope_tables_2d(head_dim, self.config.grid_size, self.config.rope_theta, device)
                n_ctx = self.config.num_in_context_tokens
                cos_ctx = torch.cat([cos.new_ones(n_ctx, cos.shape[1]), cos])
                sin_ctx = torch.cat([sin.new_zeros(n_ctx, sin.shape[1]), sin])
            self._rope_cache[key] = (cos, sin, cos_ctx, sin_ctx)
        return self._rope_cache[key]

    def compile_blocks(self, **compile_kwargs) -> None:
        """`torch.compile` each block in place (parameter names unchanged); the RoPE tables, the in-context tokens
        and the final layer stay eager."""
        for block in self.blocks:
            block.compile(**compile_kwargs)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """`[B, g*g, p*p*C]` (patch values ordered row, column, channel) -> `[B, C, g*p, g*p]`."""
        batch, g, p, c = tokens.shape[0], self.config.grid_size, self.config.patch_size, self.config.num_channels
        tokens = tokens.reshape(batch, g, g, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", tokens).reshape(batch, c, g * p, g * p)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor | float,
        class_labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
    ) -> JiTOutput | tuple[torch.Tensor]:
        batch = x.shape[0]
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32)
        t = t.expand(batch) if t.ndim == 0 else t.reshape(batch)
        if class_labels is None:
            class_labels = torch.full((batch,), self.config.null_class, device=x.device, dtype=torch.long)
        y = self.y_embedder(class_labels)
        c = self.t_embedder(t) + y
        h = self.x_embedder(x) + self.pos_embed
        cos, sin, cos_ctx, sin_ctx = self.rope(x.device)
        n_ctx = self.config.num_in_context_tokens
        for index, block in enumerate(self.blocks):
            if n_ctx and index == self.config.in_context_start:
                h = torch.cat([y.unsqueeze(1) + self.in_context_posemb, h], dim=1)
                cos, sin = cos_ctx, sin_ctx
            h = block(h, c, cos, sin)
        if n_ctx:
            h = h[:, n_ctx:]
        prediction = self.unpatchify(self.final_layer(h, c))
        if return_dict is False:
            return (prediction,)
        return JiTOutput(prediction=prediction)


__all__ = ["JiTModel", "JiTOutput", "JiTPreTrainedModel"]
