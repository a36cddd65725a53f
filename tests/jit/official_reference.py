"""An independent, functional JiT forward written from the reference facts (jit.md), on official-layout tensors.

It shares no code with `rae_hf.models.jit`: RoPE is built per token with explicit angles, attention is the official
fp32 softmax, and unpatchify is an explicit loop. Used to check the model and the converter (max |diff| <= 1e-5).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _rms(x, w, eps=1e-6):
    x32 = x.float()
    return x32 / torch.sqrt(x32.pow(2).mean(-1, keepdim=True) + eps) * w


def _rope_angles(head_dim: int, grid: int) -> torch.Tensor:
    """[grid*grid, head_dim]: first half by the row index, second half by the column; pairs share one frequency."""
    quarter = head_dim // 4
    freqs = [10000 ** (-2 * j / (head_dim // 2)) for j in range(quarter)]
    table = torch.zeros(grid * grid, head_dim, dtype=torch.float64)
    for n in range(grid * grid):
        row, col = divmod(n, grid)
        for j, f in enumerate(freqs):
            table[n, 2 * j] = table[n, 2 * j + 1] = row * f
            table[n, head_dim // 2 + 2 * j] = table[n, head_dim // 2 + 2 * j + 1] = col * f
    return table.float()


def _rotate(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    a, b = x[..., 0::2], x[..., 1::2]
    c, s = angles[..., 0::2].cos(), angles[..., 0::2].sin()
    out = torch.empty_like(x)
    out[..., 0::2] = a * c - b * s
    out[..., 1::2] = b * c + a * s
    return out


def reference_forward(state: dict, x, t, y, num_heads: int, in_context_start: int, patch: int) -> torch.Tensor:
    """The official network's output for `x` `[B, 3, H, W]`, `t` `[B]`, labels `y` `[B]` (state without `net.`)."""
    s = {k.removeprefix("net."): v.float() for k, v in state.items()}
    depth = 1 + max(int(k.split(".")[1]) for k in s if k.startswith("blocks."))
    d = s["pos_embed"].shape[-1]
    freqs = torch.exp(-math.log(10000) * torch.arange(128) / 128)
    args = t[:, None].float() * freqs
    temb = torch.cat([args.cos(), args.sin()], -1)
    temb = F.linear(F.silu(F.linear(temb, s["t_embedder.mlp.0.weight"], s["t_embedder.mlp.0.bias"])),
                    s["t_embedder.mlp.2.weight"], s["t_embedder.mlp.2.bias"])  # fmt: skip
    yemb = s["y_embedder.embedding_table.weight"][y]
    c = F.silu(temb + yemb)
    h = F.conv2d(F.conv2d(x, s["x_embedder.proj1.weight"], stride=patch), s["x_embedder.proj2.weight"],
                 s["x_embedder.proj2.bias"])  # fmt: skip
    h = h.flatten(2).transpose(1, 2) + s["pos_embed"]
    grid = x.shape[-1] // patch
    head_dim = d // num_heads
    angles = _rope_angles(head_dim, grid)
    n_ctx = s["in_context_posemb"].shape[1]
    for i in range(depth):
        p = f"blocks.{i}."
        if i == in_context_start:
            h = torch.cat([yemb[:, None] + s["in_context_posemb"], h], 1)
            angles = torch.cat([torch.zeros(n_ctx, head_dim), angles])
        mod = F.linear(c, s[p + "adaLN_modulation.1.weight"], s[p + "adaLN_modulation.1.bias"]).chunk(6, -1)
        a = _rms(h, s[p + "norm1.weight"]) * (1 + mod[1][:, None]) + mod[0][:, None]
        qkv = F.linear(a, s[p + "attn.qkv.weight"], s[p + "attn.qkv.bias"])
        q, k, v = qkv.view(h.shape[0], h.shape[1], 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)
        q = _rotate(_rms(q, s[p + "attn.q_norm.weight"]), angles)
        k = _rotate(_rms(k, s[p + "attn.k_norm.weight"]), angles)
        attn = ((q @ k.transpose(-1, -2)) / math.sqrt(head_dim)).softmax(-1) @ v
        attn = F.linear(attn.transpose(1, 2).reshape(h.shape), s[p + "attn.proj.weight"], s[p + "attn.proj.bias"])
        h = h + mod[2][:, None] * attn
        m = _rms(h, s[p + "norm2.weight"]) * (1 + mod[4][:, None]) + mod[3][:, None]
        g, val = F.linear(m, s[p + "mlp.w12.weight"], s[p + "mlp.w12.bias"]).chunk(2, -1)
        h = h + mod[5][:, None] * F.linear(F.silu(g) * val, s[p + "mlp.w3.weight"], s[p + "mlp.w3.bias"])
    h = h[:, n_ctx:]
    shift, scale = F.linear(c, s["final_layer.adaLN_modulation.1.weight"],
                            s["final_layer.adaLN_modulation.1.bias"]).chunk(2, -1)  # fmt: skip
    h = _rms(h, s["final_layer.norm_final.weight"]) * (1 + scale[:, None]) + shift[:, None]
    tokens = F.linear(h, s["final_layer.linear.weight"], s["final_layer.linear.bias"])
    out = torch.zeros_like(x)
    for n in range(grid * grid):  # token values ordered (row in patch, column in patch, channel)
        row, col = divmod(n, grid)
        block = tokens[:, n].view(-1, patch, patch, x.shape[1]).permute(0, 3, 1, 2)
        out[:, :, row * patch : (row + 1) * patch, col * patch : (col + 1) * patch] = block
    return out
