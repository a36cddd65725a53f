"""Text as pixels: text -> tokens -> an image with one token per patch -> tokens -> text, deterministic and invertible.

Pixel contract: images are in [0, 1] (`[B, C, H, W]`), like every image in rae_hf; the diffusion model sees them as
[-1, 1]. Token `i` of a text fills patch `i` (row-major) with its codeword, `p * p * C` values ordered (row in patch,
column in patch, channel) — the order in which JiT predicts a patch.

Schemes:
- `"bits"` (default): the token id's bits as 0/1 pixel values (±1 for the model), bit `j mod n_bits` on value `j`, so
  every bit is repeated over the 48 values of a 4x4x3 patch; decoded by the nearest codeword of the vocabulary.
- `"flat"` (the seed's): one colour per token (`L = ceil(V^(1/3))` levels per channel), decoded by rounding the
  patch mean. It cannot separate a large vocabulary robustly; kept as an option.

Tokens: UTF-8 bytes by default (vocabulary 256 + EOS + PAD, no download) or any HF tokenizer. A text becomes its
tokens, one EOS, then PAD up to `num_tokens`; longer texts are cut (at a character boundary for bytes) with a warning.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch

SCHEMES = ("bits", "flat")


class TextPixelCodec:
    """Encode texts to `[B, C, H, W]` images in [0, 1] and decode them back (see the module docstring).

    Args:
        image_size / patch_size / num_channels: image geometry; `num_tokens = (image_size / patch_size)^2`.
        scheme: `"bits"` or `"flat"`.
        tokenizer: `None` for UTF-8 bytes, or a `transformers` tokenizer (ids `0..len(tokenizer)-1`).
    """

    def __init__(
        self, image_size: int = 64, patch_size: int = 4, num_channels: int = 3, scheme: str = "bits", tokenizer=None
    ):
        if scheme not in SCHEMES:
            raise ValueError(f"scheme={scheme!r} must be one of {SCHEMES}.")
        if image_size % patch_size != 0:
            raise ValueError(f"image_size={image_size} must be a multiple of patch_size={patch_size}.")
        self.image_size, self.patch_size, self.num_channels = image_size, patch_size, num_channels
        self.scheme, self.tokenizer = scheme, tokenizer
        self.grid = image_size // patch_size
        self.num_tokens = self.grid**2
        self.patch_dim = patch_size * patch_size * num_channels
        base = 256 if tokenizer is None else len(tokenizer)
        self.eos_id, self.pad_id = base, base + 1
        self.vocab_size = base + 2
        self.num_bits = max(1, math.ceil(math.log2(self.vocab_size)))
        if scheme == "bits" and self.num_bits > self.patch_dim:
            raise ValueError(f"{self.num_bits} bits do not fit in a patch of {self.patch_dim} values.")
        self.levels = math.ceil(self.vocab_size ** (1 / num_channels))
        while self.levels**num_channels < self.vocab_size:  # guard against float rounding
            self.levels += 1
        self.codebook = self._codebook()  # [V, patch_dim] in [0, 1]

    # ----- codewords --------------------------------------------------------------------------------------------
    def _codebook(self) -> torch.Tensor:
        ids = torch.arange(self.vocab_size)
        if self.scheme == "bits":
            bit_of_value = torch.arange(self.patch_dim) % self.num_bits
            return ((ids[:, None] >> bit_of_value[None, :]) & 1).float()
        digits = torch.stack([(ids // self.levels**k) % self.levels for k in reversed(range(self.num_channels))], 1)
        colours = digits.float() / (self.levels - 1)  # [V, C]
        return colours.repeat(1, self.patch_size * self.patch_size)  # (py, px, c) order, channel fastest

    # ----- text <-> tokens --------------------------------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text`, EOS, PAD up to `num_tokens` (texts that do not fit are cut, with a warning)."""
        capacity = self.num_tokens - 1
        if self.tokenizer is None:
            data = text.encode("utf-8")
            if len(data) > capacity:
                cut = capacity
                while cut > 0 and (data[cut] & 0xC0) == 0x80:  # do not split a UTF-8 character
                    cut -= 1
                warnings.warn(f"Text of {len(data)} bytes cut to {cut} (capacity {capacity}).", stacklevel=2)
                data = data[:cut]
            ids = list(data)
        else:
            ids = list(self.tokenizer.encode(text, add_special_tokens=False))
            if len(ids) > capacity:
                warnings.warn(f"Text of {len(ids)} tokens cut to {capacity}.", stacklevel=2)
                ids = ids[:capacity]
        return ids + [self.eos_id] + [self.pad_id] * (capacity - len(ids))

    def detokenize(self, ids: Sequence[int]) -> str:
        """Text of the tokens before the first EOS (PAD and out-of-vocabulary specials dropped)."""
        content = []
        for token in ids:
            if token == self.eos_id:
                break
            if token < self.eos_id:
                content.append(int(token))
        if self.tokenizer is None:
            return bytes(content).decode("utf-8", errors="replace")
        return self.tokenizer.decode(content)

    # ----- tokens <-> images ------------------------------------------------------------------------------------
    def tokens_to_images(self, tokens: torch.Tensor) -> torch.Tensor:
        """`[B, num_tokens]` ids -> `[B, C, H, W]` images in [0, 1]."""
        codes = self.codebook.to(tokens.device)[tokens]  # [B, N, patch_dim]
        b, g, p, c = tokens.shape[0], self.grid, self.patch_size, self.num_channels
        codes = codes.reshape(b, g, g, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", codes).reshape(b, c, g * p, g * p)

    def images_to_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """`[B, C, H, W]` images in [0, 1] (noisy or not) -> `[B, num_tokens]` ids of the nearest codewords."""
        b, g, p, c = images.shape[0], self.grid, self.patch_size, self.num_channels
        patches = images.float().reshape(b, c, g, p, g, p)
        patches = torch.einsum("nchpwq->nhwpqc", patches).reshape(b, g * g, self.patch_dim)
        if self.scheme == "flat":
            colour = patches.reshape(b, g * g, p * p, c).mean(2).clamp(0, 1)
            digits = torch.round(colour * (self.levels - 1)).long()
            ids = torch.zeros(b, g * g, dtype=torch.long, device=images.device)
            for k in range(c):
                ids = ids * self.levels + digits[..., k]
            return ids.clamp_max(self.vocab_size - 1)
        codebook = self.codebook.to(images.device) * 2 - 1  # nearest in L2 == largest correlation (equal norms)
        return torch.einsum("bnd,vd->bnv", patches * 2 - 1, codebook).argmax(-1)

    # ----- text <-> images --------------------------------------------------------------------------------------
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts -> `[B, C, H, W]` images in [0, 1]."""
        return self.tokens_to_images(torch.tensor([self.tokenize(text) for text in texts], dtype=torch.long))

    def decode(self, images: torch.Tensor) -> list[str]:
        """Images in [0, 1] -> texts."""
        return [self.detokenize(row) for row in self.images_to_tokens(images).tolist()]


__all__ = ["SCHEMES", "TextPixelCodec"]
