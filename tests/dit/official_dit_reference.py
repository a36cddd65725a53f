"""An independent re-implementation of the official DiT-DH network (`DiTwDDTHead`), written from the facts of
shared/reference/rae_stage2.md in the official module and state-dict layout; used only by tests.

It is deliberately written differently from `rae_hf.models.dit` (tables built per (row, column) position, attention
as explicit softmax math, modulation helpers that repeat conditions), so agreement checks both.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def mae_sincos_2d(dim: int, grid: int) -> np.ndarray:
    """MAE 2-D sin-cos table `[grid*grid, dim]`: dims [0, D/2) the column, [D/2, D) the row; each half [sin | cos]."""

    def one_axis(half: int, positions: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(half // 2, dtype=np.float64) / (half / 2.0))
        angles = np.outer(positions.reshape(-1), omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    column, row = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))
    return np.concatenate([one_axis(dim // 2, column), one_axis(dim // 2, row)], axis=1)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        y = x.float()
        y = y / torch.sqrt(y.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return y.type_as(x) * self.weight


class PatchEmbed(nn.Module):
    def __init__(self, channels: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(channels, dim, kernel_size=1, stride=1, bias=True)

    def forward(self, x):
        b, _, h, w = x.shape
        return self.proj(x).permute(0, 2, 3, 1).reshape(b, h * w, -1)  # token n = i * w + j


class GaussianFourierEmbedding(nn.Module):
    def __init__(self, dim: int, size: int = 256):
        super().__init__()
        self.W = nn.Parameter(torch.randn(size), requires_grad=False)
        self.mlp = nn.Sequential(nn.Linear(2 * size, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t):
        arg = t[:, None] * self.W[None, :] * 2 * torch.pi
        return self.mlp(torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1))


class LabelEmbedder(nn.Module):
    def __init__(self, num_classes: int, dim: int, dropout_prob: float):
        super().__init__()
        self.num_classes, self.dropout_prob = num_classes, dropout_prob
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), dim)

    def forward(self, labels, train: bool):
        if train and self.dropout_prob > 0:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return self.embedding_table(labels)


class EvaRope2D(nn.Module):
    """Tables `[G*G, hd]`; head dims [0, hd/2) rotate by the row, [hd/2, hd) by the column; pairs (2m, 2m+1)."""

    def __init__(self, head_dim: int, grid: int, theta: float = 10000.0):
        super().__init__()
        quarter = head_dim // 4
        freqs = [theta ** (-4.0 * k / head_dim) for k in range(quarter)]
        table = torch.zeros(grid * grid, head_dim)
        for i in range(grid):
            for j in range(grid):
                for k, f in enumerate(freqs):
                    table[i * grid + j, 2 * k] = table[i * grid + j, 2 * k + 1] = i * f
                    table[i * grid + j, head_dim // 2 + 2 * k] = table[i * grid + j, head_dim // 2 + 2 * k + 1] = j * f
        self.register_buffer("freqs_cos", table.cos())
        self.register_buffer("freqs_sin", table.sin())

    def forward(self, x):
        even, odd = x[..., 0::2], x[..., 1::2]
        rotated = torch.stack([-odd, even], dim=-1).reshape(x.shape)
        return x * self.freqs_cos + rotated * self.freqs_sin


class NormAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, rope):
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = rope(qkv[0]).to(qkv.dtype), rope(qkv[1]).to(qkv.dtype), qkv[2]
        weights = torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(d // self.heads)
        out = torch.einsum("bhqk,bhkd->bhqd", weights.softmax(dim=-1), v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class SwiGLUFFN(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x):
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


def ddt_modulate(x, shift, scale):
    repeat = x.shape[1] // shift.shape[1]
    return x * (1 + scale.repeat_interleave(repeat, 1)) + shift.repeat_interleave(repeat, 1)


def ddt_gate(x, gate):
    return x * gate.repeat_interleave(x.shape[1] // gate.shape[1], 1)


class LightningDDTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1, self.norm2 = RMSNorm(dim), RMSNorm(dim)
        self.attn = NormAttention(dim, heads)
        self.mlp = SwiGLUFFN(dim, int(2 / 3 * int(dim * mlp_ratio)))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x, c, rope):
        if c.dim() == 2:
            c = c[:, None]
        sh1, sc1, g1, sh2, sc2, g2 = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + ddt_gate(self.attn(ddt_modulate(self.norm1(x), sh1, sc1), rope), g1)
        return x + ddt_gate(self.mlp(ddt_modulate(self.norm2(x), sh2, sc2)), g2)


class DDTFinalLayer(nn.Module):
    def __init__(self, dim: int, out_channels: int):
        super().__init__()
        self.norm_final = RMSNorm(dim)
        self.linear = nn.Linear(dim, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(ddt_modulate(self.norm_final(x), shift, scale))


class DiTwDDTHead(nn.Module):
    """`hidden_size`, `depth`, `num_heads` are `[encoder, head]` as in the official constructor."""

    def __init__(
        self,
        input_size: int,
        in_channels: int,
        hidden_size: tuple[int, int],
        depth: tuple[int, int],
        num_heads: tuple[int, int],
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1,
        num_classes: int = 1000,
    ):
        super().__init__()
        (enc, dec), self.depth = hidden_size, depth
        self.x_embedder = PatchEmbed(in_channels, dec)
        self.s_embedder = PatchEmbed(in_channels, enc)
        self.s_projector = nn.Linear(enc, dec) if enc != dec else nn.Identity()
        self.t_embedder = GaussianFourierEmbedding(enc)
        self.y_embedder = LabelEmbedder(num_classes, enc, class_dropout_prob)
        self.final_layer = DDTFinalLayer(dec, in_channels)
        table = torch.from_numpy(mae_sincos_2d(enc, input_size)).float()[None]
        self.pos_embed = nn.Parameter(table, requires_grad=False)
        self.enc_feat_rope = EvaRope2D(enc // num_heads[0], input_size)
        self.dec_feat_rope = EvaRope2D(dec // num_heads[1], input_size)
        self.blocks = nn.ModuleList(
            [LightningDDTBlock(enc, num_heads[0], mlp_ratio) for _ in range(depth[0])]
            + [LightningDDTBlock(dec, num_heads[1], mlp_ratio) for _ in range(depth[1])]
        )

    def forward(self, x, t, y):
        b, c, h, w = x.shape
        t = self.t_embedder(t)
        cond = F.silu(t + self.y_embedder(y, self.training))
        s = self.s_embedder(x) + self.pos_embed
        for block in self.blocks[: self.depth[0]]:
            s = block(s, cond, self.enc_feat_rope)
        s = self.s_projector(F.silu(t[:, None, :].expand(-1, s.shape[1], -1) + s))
        z = self.x_embedder(x)
        for block in self.blocks[self.depth[0] :]:
            z = block(z, s, self.dec_feat_rope)
        z = self.final_layer(z, s)
        return z.reshape(b, h, w, c).permute(0, 3, 1, 2)


def randomized(model: nn.Module, seed: int, scale: float = 0.3) -> nn.Module:
    """Every learned tensor redrawn (adaLN and final layers included, which the official init zeroes) so that every
    path of the network shows in the output; fixed tables (`pos_embed`, RoPE) kept."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name == "pos_embed":
                continue
            if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name.endswith("norm_final.weight"):
                param.copy_(1 + 0.1 * torch.randn(param.shape, generator=generator))
            elif name == "t_embedder.W":
                param.copy_(torch.randn(param.shape, generator=generator))
            else:
                fan_in = param[0].numel() if param.ndim > 1 else 1
                param.copy_(scale * torch.randn(param.shape, generator=generator) / math.sqrt(fan_in))
    return model
