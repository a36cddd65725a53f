"""DiT-DH (`DiTwDDTHead`, RAE paper arXiv 2510.11690): a LightningDiT encoder over normalized RAE latents followed by
a wide, shallow DDT head whose adaLN is conditioned per token on the encoder output.

Conventions (the official code's): `timesteps` in [0, 1] with t = 0 the data and t = 1 the noise; the network
predicts the velocity `noise - data`; class label `num_classes` is the null class. Parameter and buffer names equal
the official ones, so an official state dict loads as it is (`python -m rae_hf.convert dit`).

Like `configuration_dit.py`, this file imports nothing from `rae_hf` so that `save_pretrained` can copy it next to
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

from .configuration_dit import DiTDHConfig


@dataclass
class DiTDHOutput(ModelOutput):
    """prediction: `[B, C, h, w]` velocity (`noise - data` in the official time convention)."""

    prediction: torch.FloatTensor | None = None


# Copied from rae_hf.models.jit.modeling_jit.sincos_position_embedding_2d
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


# Copied from rae_hf.models.jit.modeling_jit.rope_tables_2d
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


# Copied from rae_hf.models.jit.modeling_jit.apply_rope
def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`x * cos + rot(x) * sin` with `rot` mapping each consecutive pair (a, b) to (-b, a); `x`: `[B, heads, L, D]`."""
    pairs = x.unflatten(-1, (-1, 2))
    rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: `x * (1 + scale) + shift`; `shift`/`scale` are `[B, 1, D]` (per sample) or `[B, L, D]` (per token)."""
    return x * (1 + scale) + shift


class DiTDHRMSNorm(nn.Module):
    """RMSNorm as the official one: normalized in fp32, cast back to the input dtype, then scaled by the weight."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class DiTDHRotaryEmbedding(nn.Module):
    """Fixed 2-D RoPE tables `freqs_cos`/`freqs_sin` `[grid*grid, head_dim]` (fp32 buffers stored in checkpoints)."""

    def __init__(self, head_dim: int, grid_size: int, theta: float):
        super().__init__()
        self.head_dim, self.grid_size, self.theta = head_dim, grid_size, theta
        cos, sin = rope_tables_2d(head_dim, grid_size, theta)
        self.register_buffer("freqs_cos", cos)
        self.register_buffer("freqs_sin", sin)


class DiTDHTimestepEmbedder(nn.Module):
    """Gaussian-Fourier time embedding: `[sin(2 pi t W), cos(2 pi t W)]` with a frozen random `W` (stored), then
    Linear -> SiLU -> Linear. `t` in [0, 1], unscaled."""

    def __init__(self, config: DiTDHConfig):
        super().__init__()
        n, d = config.fourier_embedding_size, config.hidden_size
        self.W = nn.Parameter(torch.empty(n), requires_grad=False)
        self.mlp = nn.Sequential(nn.Linear(2 * n, d), nn.SiLU(), nn.Linear(d, d))
        for layer in (self.mlp[0], self.mlp[2]):
            layer._dit_init = "normal"

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = t[:, None] * self.W.detach()[None, :] * 2 * math.pi
        features = torch.cat([angles.sin(), angles.cos()], dim=-1)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class DiTDHLabelEmbedder(nn.Module):
    """Class table with `num_classes + 1` rows; the last row is the null class. No label dropout here: the trainer
    drops labels (`rae_hf.diffusion.drop_labels`), so the forward pass is deterministic in train mode too."""

    def __init__(self, num_classes: int, hidden_size: int):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(labels)


class DiTDHPatchEmbed(nn.Module):
    """1x1 convolution (patch size 1) from the latent channels to a width; row-major tokens `[B, h*w, D]`."""

    def __init__(self, in_channels: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class DiTDHAttention(nn.Module):
    """Fused-qkv attention with 2-D RoPE on q and k (no qk-norm); SDPA, or the same math written out (`eager`)."""

    def __init__(self, config: DiTDHConfig, hidden_size: int, num_heads: int):
        super().__init__()
        self.config = config
        self.num_heads, self.head_dim = num_heads, hidden_size // num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        # the tables are fp32: rotate in the promoted dtype, then back to v's dtype (official, matters under bf16)
        dtype = torch.promote_types(q.dtype, cos.dtype)
        q = apply_rope(q.to(dtype), cos, sin).to(v.dtype)
        k = apply_rope(k.to(dtype), cos, sin).to(v.dtype)
        if self.config._attn_implementation == "eager":
            out = ((q * self.head_dim**-0.5) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, length, width))


class DiTDHSwiGLU(nn.Module):
    """`w3(SiLU(a) * b)` with `[a, b] = w12(x)`."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.w12 = nn.Linear(hidden_size, 2 * intermediate_size)
        self.w3 = nn.Linear(intermediate_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * value)


class DiTDHBlock(GradientCheckpointingLayer):
    """LightningDiT block (encoder and head alike): RMSNorm, RoPE attention, SwiGLU, 6-chunk adaLN-Zero. The
    condition is `[B, D]` (encoder: one per sample) or `[B, L, D]` (head: one per token)."""

    def __init__(self, config: DiTDHConfig, head: bool):
        super().__init__()
        d = config.head_hidden_size if head else config.hidden_size
        heads = config.head_num_attention_heads if head else config.num_attention_heads
        hidden = config.head_intermediate_size if head else config.intermediate_size
        self.norm1 = DiTDHRMSNorm(d, config.rms_norm_eps)
        self.norm2 = DiTDHRMSNorm(d, config.rms_norm_eps)
        self.attn = DiTDHAttention(config, d, heads)
        self.mlp = DiTDHSwiGLU(d, hidden)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.adaLN_modulation[1]._dit_init = "zeros"

    def forward(self, x: torch.Tensor, c: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        if c.ndim == 2:
            c = c.unsqueeze(1)
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + self.attn(modulate(self.norm1(x), shift1, scale1), cos, sin) * gate1
        return x + self.mlp(modulate(self.norm2(x), shift2, scale2)) * gate2


class DiTDHFinalLayer(nn.Module):
    """RMSNorm, per-token adaLN shift/scale (no gate), Linear to the latent channels."""

    def __init__(self, config: DiTDHConfig):
        super().__init__()
        d = config.head_hidden_size
        self.norm_final = DiTDHRMSNorm(d, config.rms_norm_eps)
        self.linear = nn.Linear(d, config.patch_size**2 * config.in_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        self.linear._dit_init = "zeros"
        self.adaLN_modulation[1]._dit_init = "zeros"

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(s).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiTDHPreTrainedModel(PreTrainedModel):
    config_class = DiTDHConfig
    config: DiTDHConfig
    base_model_prefix = "dit"
    main_input_name = "latents"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ("DiTDHBlock",)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Official init: PyTorch's default for the Linears (no xavier pass), except zero adaLN outputs and final
        linear and N(0, 0.02) time-MLP weights; xavier patch convs (as `[out, in]`) with zero bias; N(0, 0.02) class
        table; unit RMSNorms; W ~ N(0, fourier_scale); fixed sin-cos positions and RoPE tables."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            kind = getattr(module, "_dit_init", None)
            if kind == "zeros":
                init.zeros_(module.weight)
                init.zeros_(module.bias)
                return
            if kind == "normal":
                init.normal_(module.weight, std=std)
            else:
                init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            bound = 1.0 / math.sqrt(module.in_features)
            init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.Conv2d):
            fan_out, fan_in = module.weight.shape[0], module.weight[0].numel()
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            init.uniform_(module.weight, -bound, bound)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, std=std)
        elif isinstance(module, DiTDHRMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, DiTDHTimestepEmbedder):
            init.normal_(module.W, std=self.config.fourier_scale)
        elif isinstance(module, DiTDHRotaryEmbedding):
            cos, sin = rope_tables_2d(module.head_dim, module.grid_size, module.theta)
            init.copy_(module.freqs_cos, cos)
            init.copy_(module.freqs_sin, sin)
        elif isinstance(module, DiTDHModel):
            init.copy_(module.pos_embed, sincos_position_embedding_2d(self.config.hidden_size, self.config.input_size))


class DiTDHModel(DiTDHPreTrainedModel):
    """The DiT-DH velocity network.

    `forward(latents, timesteps, class_labels)`: `latents` `[B, C, h, w]` (normalized RAE latents, h = w =
    `input_size`), `timesteps` `[B]` (or a number) in [0, 1] with t = 0 data and t = 1 noise (the official
    convention), `class_labels` `[B]` long (`num_classes` = null; `None` = all null) -> `DiTDHOutput.prediction`, the
    velocity exactly as the official network outputs it. Unlike the official network, `forward` never drops labels
    (not even in train mode): label dropout belongs to the trainer.
    """

    def __init__(self, config: DiTDHConfig):
        super().__init__(config)
        de, dd, grid = config.hidden_size, config.head_hidden_size, config.input_size
        # registration order = the official state-dict order
        self.x_embedder = DiTDHPatchEmbed(config.in_channels, dd)
        self.s_embedder = DiTDHPatchEmbed(config.in_channels, de)
        self.s_projector = nn.Linear(de, dd) if de != dd else nn.Identity()
        self.t_embedder = DiTDHTimestepEmbedder(config)
        self.y_embedder = DiTDHLabelEmbedder(config.num_classes, de)
        self.final_layer = DiTDHFinalLayer(config)
        self.pos_embed = nn.Parameter(sincos_position_embedding_2d(de, grid), requires_grad=False)  # frozen, stored
        self.enc_feat_rope = DiTDHRotaryEmbedding(de // config.num_attention_heads, grid, config.rope_theta)
        self.dec_feat_rope = DiTDHRotaryEmbedding(dd // config.head_num_attention_heads, grid, config.rope_theta)
        self.blocks = nn.ModuleList(
            [DiTDHBlock(config, head=False) for _ in range(config.num_hidden_layers)]
            + [DiTDHBlock(config, head=True) for _ in range(config.head_num_layers)]
        )
        self.post_init()

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, with the frozen parameters (sin-cos positions, Fourier W) frozen again
        (loading re-creates parameters with `requires_grad=True`: they would enter the optimizer and the EMA)."""
        loaded = super().from_pretrained(*args, **kwargs)
        (loaded[0] if isinstance(loaded, tuple) else loaded).freeze_fixed_parameters()
        return loaded

    def freeze_fixed_parameters(self) -> None:
        """`requires_grad=False` on `pos_embed` and `t_embedder.W` (fixed in the official model)."""
        self.pos_embed.requires_grad_(False)
        self.t_embedder.W.requires_grad_(False)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """`[B, h*w, C]` row-major tokens -> `[B, C, h, w]` (patch size 1)."""
        grid = self.config.input_size
        return tokens.transpose(1, 2).unflatten(2, (grid, grid))

    def forward(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor | float,
        class_labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
    ) -> DiTDHOutput | tuple[torch.Tensor]:
        config = self.config
        expected = (config.in_channels, config.input_size, config.input_size)
        if latents.ndim != 4 or tuple(latents.shape[1:]) != expected:
            raise ValueError(f"latents must be [B, {', '.join(map(str, expected))}], got {tuple(latents.shape)}.")
        batch = latents.shape[0]
        t = torch.as_tensor(timesteps, device=latents.device, dtype=torch.float32)
        t = t.expand(batch) if t.ndim == 0 else t.reshape(batch)
        if class_labels is None:
            class_labels = torch.full((batch,), config.null_class, device=latents.device, dtype=torch.long)
        t_emb = self.t_embedder(t)
        c = F.silu(t_emb + self.y_embedder(class_labels))
        s = self.s_embedder(latents) + self.pos_embed
        depth = config.num_hidden_layers
        cos, sin = self.enc_feat_rope.freqs_cos, self.enc_feat_rope.freqs_sin
        for block in self.blocks[:depth]:
            s = block(s, c, cos, sin)
        s = self.s_projector(F.silu(t_emb.unsqueeze(1) + s))  # per-token condition of the head (time, no label)
        x = self.x_embedder(latents)
        cos, sin = self.dec_feat_rope.freqs_cos, self.dec_feat_rope.freqs_sin
        for block in self.blocks[depth:]:
            x = block(x, s, cos, sin)
        prediction = self.unpatchify(self.final_layer(x, s))
        if return_dict is False:
            return (prediction,)
        return DiTDHOutput(prediction=prediction)


__all__ = ["DiTDHModel", "DiTDHOutput", "DiTDHPreTrainedModel"]
