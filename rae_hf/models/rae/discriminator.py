"""DINO-feature discriminator of the RAE stage-1 training (StyleGAN-T style heads on a frozen DINO ViT-S/8).

Facts of the official design reproduced here: the frozen trunk uses the tanh-approximate GELU and LayerNorm eps 1e-6;
the outputs of blocks 2, 5, 8, 11 and of the final block are taken before the final LayerNorm with the CLS token
dropped; each feeds a head of spectral-normed 1-D convolutions whose normalization is per sample and channel over the
tokens (so one image's logits never depend on the rest of its batch, and data-parallel ranks need no statistics).
"""

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm
from transformers import AutoConfig, ViTModel
from transformers.utils.constants import IMAGENET_DEFAULT_MEAN as _IMAGENET_MEAN
from transformers.utils.constants import IMAGENET_DEFAULT_STD as _IMAGENET_STD

from .diffaugment import DEFAULT_POLICY, diff_augment

__all__ = ["DinoDiscriminator", "DiscriminatorHead", "TokenNorm", "quantize_8bit"]

# The official trunk (DINO ViT-S/8 re-implemented there) uses these, where the HF port of DINO has exact GELU / 1e-12.
OFFICIAL_TRUNK_ACTIVATION = "gelu_pytorch_tanh"
OFFICIAL_TRUNK_LAYER_NORM_EPS = 1e-6


def quantize_8bit(x: torch.Tensor) -> torch.Tensor:
    """Clamp to ``[0, 1]`` and round to multiples of 1/255 with a straight-through gradient.

    The forward value is the 8-bit quantised image; the backward pass treats rounding as the identity
    (the clamp still zeroes gradients of out-of-range pixels).
    """
    clamped = x.clamp(0.0, 1.0)
    quantized = torch.round(clamped * 255.0) / 255.0
    return clamped + (quantized - clamped).detach()


def _spectral_conv(in_channels: int, out_channels: int, kernel_size: int) -> nn.Module:
    """Spectral-normed Conv1d (1 power iteration per training forward, eps 1e-12) with circular padding.

    The power-iteration vectors start as normalized Gaussian draws without warm-up iterations, as the official
    heads' spectral norm does (PyTorch's parametrization would otherwise run 15 iterations at construction).
    """
    conv = spectral_norm(
        nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, padding_mode="circular")
    )
    norm = conv.parametrizations.weight[0]
    with torch.no_grad():
        norm._u.copy_(F.normalize(torch.randn_like(norm._u), dim=0, eps=norm.eps))
        norm._v.copy_(F.normalize(torch.randn_like(norm._v), dim=0, eps=norm.eps))
    return conv


class TokenNorm(nn.Module):
    """Normalizes ``[B, C, T]`` features per sample and channel over the tokens (eps 1e-6), then a learned
    per-channel scale and shift. Computed in float32; never uses batch statistics."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        var, mean = torch.var_mean(x, dim=2, keepdim=True, correction=0)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return x * self.weight[None, :, None] + self.bias[None, :, None]


class _ConvBlock(nn.Sequential):
    """Spectral-normed Conv1d + per-sample `TokenNorm` + LeakyReLU(0.2)."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__(_spectral_conv(channels, channels, kernel_size), TokenNorm(channels), nn.LeakyReLU(0.2))


class _ResidualBlock(nn.Module):
    """Variance-preserving residual wrapper: ``(f(x) + x) / sqrt(2)``."""

    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.fn(x) + x) * (1.0 / math.sqrt(2.0))


class DiscriminatorHead(nn.Module):
    """Per-token logit head on ``[B, C, T]`` features: 1x1 block, residual k-wide block, 1x1 projection to 1."""

    def __init__(self, channels: int, kernel_size: int = 9) -> None:
        super().__init__()
        self.main = nn.Sequential(
            _ConvBlock(channels, kernel_size=1),
            _ResidualBlock(_ConvBlock(channels, kernel_size=kernel_size)),
        )
        self.cls = _spectral_conv(channels, 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map features ``[B, C, T]`` to logits ``[B, T]``."""
        return self.cls(self.main(x)).squeeze(1)


def _use_official_trunk(backbone: ViTModel) -> None:
    """Switch a ViT trunk to the tanh-approximate GELU and LayerNorm eps 1e-6 of the official DINO trunk."""
    for module in backbone.modules():
        if isinstance(module, nn.LayerNorm):
            module.eps = OFFICIAL_TRUNK_LAYER_NORM_EPS
        if hasattr(module, "activation_fn"):  # the MLP of each block
            module.activation_fn = nn.GELU(approximate="tanh")
    backbone.config.hidden_act = OFFICIAL_TRUNK_ACTIVATION
    backbone.config.layer_norm_eps = OFFICIAL_TRUNK_LAYER_NORM_EPS


class DinoDiscriminator(nn.Module):
    """Discriminator on frozen DINO ViT features with trainable heads on selected blocks and the final block.

    The backbone is frozen (no parameter grads, always in eval mode) but stays in the autograd graph, so
    gradients reach the input image. Only the heads are trainable and checkpointed. Logits are ordered as the
    official code orders them: the final block's tokens first, then those of ``hook_blocks``.

    Args:
        backbone: A HF ``ViTModel`` (DINO ViT-S/8 for the paper).
        hook_blocks: 0-based blocks whose outputs feed a head (besides the final block).
        input_size: Images are resized (bilinear) to this size before the backbone.
        head_kernel_size: Kernel of the circular residual convolution in each head.
        diffaug_policy: DiffAugment ops, in order (official: translation, then colour).
        official_trunk: Switch the backbone to the tanh-approximate GELU and LayerNorm eps 1e-6 (the official
            trunk); False keeps the backbone's own activation and eps.
    """

    def __init__(
        self,
        backbone: ViTModel,
        hook_blocks: Sequence[int] = (2, 5, 8, 11),
        input_size: int = 224,
        head_kernel_size: int = 9,
        diffaug_policy: Sequence[str] = DEFAULT_POLICY,
        official_trunk: bool = True,
    ) -> None:
        super().__init__()
        depth = backbone.config.num_hidden_layers
        invalid = [b for b in hook_blocks if not 0 <= b < depth]
        if invalid:
            raise ValueError(
                f"hook_blocks {tuple(hook_blocks)} contain {invalid}, outside the backbone's {depth} blocks "
                f"(valid 0-based indices: 0..{depth - 1})."
            )
        if official_trunk:
            _use_official_trunk(backbone)
        self.backbone = backbone.requires_grad_(False).eval()
        self.hook_blocks = tuple(hook_blocks)
        self.input_size = input_size
        self.diffaug_policy = tuple(diffaug_policy)
        self._interpolate_pos_encoding = input_size != backbone.config.image_size
        width = backbone.config.hidden_size
        self.heads = nn.ModuleList(
            DiscriminatorHead(width, kernel_size=head_kernel_size) for _ in range(len(self.hook_blocks) + 1)
        )
        # [-1, 1] images -> ImageNet-normalized: ((x + 1) / 2 - mean) / std = x * (0.5 / std) + (0.5 - mean) / std
        mean, std = torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1)
        self.register_buffer("input_scale", 0.5 / std, persistent=False)
        self.register_buffer("input_shift", (0.5 - mean) / std, persistent=False)

    @classmethod
    def from_pretrained_backbone(cls, name_or_path: str, **kwargs: Any) -> "DinoDiscriminator":
        """Load a ``ViTModel`` (local path or hub id, e.g. ``facebook/dino-vits8``) and wrap it, frozen.

        Raises a ``ValueError`` naming the checkpoint when it is not a ViT or lacks any trunk weight (a text model
        would otherwise give a randomly initialized ViT that trains silently).
        """
        config = AutoConfig.from_pretrained(name_or_path)
        if config.model_type != "vit":
            raise ValueError(
                f"discriminator_name_or_path={name_or_path!r} is a {config.model_type!r} model; the discriminator "
                "needs a ViT image backbone (the paper uses facebook/dino-vits8)."
            )
        backbone, info = ViTModel.from_pretrained(name_or_path, add_pooling_layer=False, output_loading_info=True)
        if info["missing_keys"]:
            missing = sorted(info["missing_keys"])
            raise ValueError(
                f"discriminator_name_or_path={name_or_path!r} lacks {len(missing)} backbone weights "
                f"(e.g. {missing[:3]}): the discriminator would run on a randomly initialized ViT."
            )
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
        """State of the heads only (parameters and spectral-norm vectors), keys relative to ``heads``."""
        return self.heads.state_dict()

    def load_trainable_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load a state dict produced by :meth:`trainable_state_dict` (strict)."""
        self.heads.load_state_dict(state_dict, strict=True)

    def features(self, images_pm1: torch.Tensor) -> list[torch.Tensor]:
        """Patch-token features ``[B, C, T]`` (CLS dropped, before the final LayerNorm) of the final block and of
        ``hook_blocks``, for images in ``[-1, 1]`` already augmented."""
        x = images_pm1
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        x = x * self.input_scale + self.input_shift
        out = self.backbone(
            pixel_values=x, output_hidden_states=True, interpolate_pos_encoding=self._interpolate_pos_encoding
        )
        hidden = out.hidden_states  # embeddings, then each block's output (no final LayerNorm)
        selected = [hidden[-1]] + [hidden[b + 1] for b in self.hook_blocks]
        return [h[:, 1:].transpose(1, 2) for h in selected]

    def forward(self, images_01: torch.Tensor, augment: bool = True) -> torch.Tensor:
        """Per-token logits ``[B, heads * patches]`` for images in ``[0, 1]`` (``[B, 3, H, W]``).

        With ``augment=True`` DiffAugment is applied in ``[-1, 1]`` space at the input resolution, before the
        resize to ``input_size``. The caller decides whether fakes are quantized (see :func:`quantize_8bit`).
        """
        x = images_01 * 2.0 - 1.0
        if augment and self.diffaug_policy:
            x = diff_augment(x, policy=self.diffaug_policy)
        logits = [head(feat) for head, feat in zip(self.heads, self.features(x), strict=True)]
        return torch.cat(logits, dim=1)
