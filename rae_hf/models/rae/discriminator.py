"""DINO-feature discriminator: a frozen ViT backbone with trainable per-token heads (StyleGAN-T style)."""

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm
from transformers import ViTModel

from .diffaugment import diff_augment

__all__ = ["DinoDiscriminator", "DiscriminatorHead", "quantize_8bit"]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def quantize_8bit(x: torch.Tensor) -> torch.Tensor:
    """Clamp to ``[0, 1]`` and round to multiples of 1/255 with a straight-through gradient.

    The forward value is the 8-bit quantised image; the backward pass treats rounding as the identity
    (the clamp still zeroes gradients of out-of-range pixels).
    """
    clamped = x.clamp(0.0, 1.0)
    quantized = torch.round(clamped * 255.0) / 255.0
    return clamped + (quantized - clamped).detach()


class _ConvBlock(nn.Sequential):
    """Spectral-normed Conv1d + BatchNorm1d + LeakyReLU(0.2).

    The BatchNorm always normalizes with the statistics of the current batch (no running estimates), as the
    StyleGAN-T-style heads do: the discriminator is only ever used in training, and data-parallel ranks keep
    identical state.
    """

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__(
            spectral_norm(
                nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2, padding_mode="circular")
            ),
            nn.BatchNorm1d(channels, track_running_stats=False),
            nn.LeakyReLU(0.2),
        )


class _ResidualBlock(nn.Module):
    """Variance-preserving residual wrapper: ``(x + f(x)) / sqrt(2)``."""

    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.fn(x)) / math.sqrt(2.0)


class DiscriminatorHead(nn.Module):
    """Per-token logit head on ``[B, C, T]`` features: 1x1 block, residual k-wide block, 1x1 projection to 1."""

    def __init__(self, channels: int, kernel_size: int = 9) -> None:
        super().__init__()
        self.main = nn.Sequential(
            _ConvBlock(channels, kernel_size=1),
            _ResidualBlock(_ConvBlock(channels, kernel_size=kernel_size)),
        )
        self.cls = spectral_norm(nn.Conv1d(channels, 1, kernel_size=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map features ``[B, C, T]`` to logits ``[B, T]``."""
        return self.cls(self.main(x)).squeeze(1)


class DinoDiscriminator(nn.Module):
    """Discriminator on frozen DINO ViT features with trainable heads on selected blocks and the final output.

    The backbone is frozen (no parameter grads, always in eval mode) but stays in the autograd graph, so
    gradients reach the input image. Only the heads are trainable and checkpointed.
    """

    def __init__(
        self,
        backbone: ViTModel,
        hook_blocks: Sequence[int] = (2, 5, 8, 11),
        input_size: int = 224,
        head_kernel_size: int = 9,
        diffaug_policy: Sequence[str] = ("color", "translation"),
    ) -> None:
        super().__init__()
        depth = backbone.config.num_hidden_layers
        invalid = [b for b in hook_blocks if not 0 <= b < depth]
        if invalid:
            raise ValueError(
                f"hook_blocks {tuple(hook_blocks)} contain {invalid}, outside the backbone's {depth} blocks "
                f"(valid 0-based indices: 0..{depth - 1})."
            )
        self.backbone = backbone.requires_grad_(False).eval()
        self.hook_blocks = tuple(hook_blocks)
        self.input_size = input_size
        self.diffaug_policy = tuple(diffaug_policy)
        self._interpolate_pos_encoding = input_size != backbone.config.image_size
        width = backbone.config.hidden_size
        self.heads = nn.ModuleList(
            DiscriminatorHead(width, kernel_size=head_kernel_size) for _ in range(len(self.hook_blocks) + 1)
        )
        self.register_buffer("image_mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_pretrained_backbone(cls, name_or_path: str, **kwargs: Any) -> "DinoDiscriminator":
        """Load a ``ViTModel`` (local path or hub id, e.g. ``facebook/dino-vits8``) and wrap it, frozen."""
        backbone = ViTModel.from_pretrained(name_or_path, add_pooling_layer=False)
        return cls(backbone, **kwargs)

    def train(self, mode: bool = True) -> "DinoDiscriminator":
        """Set train/eval mode on the heads; the frozen backbone always stays in eval mode."""
        super().train(mode)
        self.backbone.eval()
        return self

    def heads_parameters(self) -> Iterator[nn.Parameter]:
        """Trainable parameters (the heads only), for the discriminator optimizer."""
        return self.heads.parameters()

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """State of the heads only (parameters and BatchNorm/spectral-norm buffers), keys relative to ``heads``."""
        return self.heads.state_dict()

    def load_trainable_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load a state dict produced by :meth:`trainable_state_dict` (strict)."""
        self.heads.load_state_dict(state_dict, strict=True)

    def forward(self, images_01: torch.Tensor, augment: bool = True) -> torch.Tensor:
        """Per-token logits ``[B, total_tokens]`` for images in ``[0, 1]`` (``[B, 3, H, W]``).

        With ``augment=True`` DiffAugment is applied (in ``[-1, 1]`` space) before resizing to ``input_size``
        and ImageNet normalisation. Fakes should be passed through :func:`quantize_8bit` by the caller.
        """
        x = images_01
        if augment and self.diffaug_policy:
            x = (diff_augment(x * 2.0 - 1.0, policy=self.diffaug_policy) + 1.0) / 2.0
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        x = (x - self.image_mean) / self.image_std
        out = self.backbone(
            pixel_values=x, output_hidden_states=True, interpolate_pos_encoding=self._interpolate_pos_encoding
        )
        features = [out.hidden_states[b + 1] for b in self.hook_blocks] + [out.last_hidden_state]
        logits = [head(feat.transpose(1, 2)) for head, feat in zip(self.heads, features, strict=True)]
        return torch.cat(logits, dim=1)
