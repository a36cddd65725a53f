"""Representation Autoencoder (RAE): frozen pretrained vision encoder + MAE-style ViT pixel decoder.

Pixel contract: every public method takes images in [0, 1] (any size; they are resized to the encoder input) and
returns reconstructions in the same [0, 1] image space (not clamped, so losses see the raw prediction).

Like `configuration_rae.py`, this file imports nothing from `rae_hf` so that `save_pretrained` can copy it next to
the weights and a pushed model loads with `trust_remote_code=True` anywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.utils import ModelOutput

from .backbone_layouts import (
    TOKEN_LAYOUTS,
    apply_config_overrides,
    final_norm_without_affine,
    image_processor_settings,
    interpolation_kwargs,
    load_vision_config,
    mae_identity_noise,
)
from .configuration_rae import RAEConfig


@dataclass
class RAEEncoderOutput(ModelOutput):
    """latents: `[B, C, h, w]` encoder patch tokens as a feature map (noised in training, normalized if enabled)."""

    latents: torch.FloatTensor | None = None


@dataclass
class RAEDecoderOutput(ModelOutput):
    """reconstruction: `[B, 3, H, W]` images in [0, 1] space (unclamped)."""

    reconstruction: torch.FloatTensor | None = None


@dataclass
class RAEOutput(ModelOutput):
    """Output of `RAEModel.forward`: the reconstruction, the latents it was decoded from and (on request) the
    noise-free encoder tokens `[B, L, C]`."""

    reconstruction: torch.FloatTensor | None = None
    latents: torch.FloatTensor | None = None
    encoder_tokens: torch.FloatTensor | None = None


def sincos_position_embedding_2d(embed_dim: int, grid_size: int, add_cls_token: bool = True) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding `[1 (+1 for CLS), grid*grid, embed_dim]` (MAE convention).

    The first half of the channels encodes the column (x) and the second half the row (y); each half is
    `[sin(pos * omega), cos(pos * omega)]` with `omega = 1 / 10000^(k / (D/4))`. The CLS position is all zeros.
    """
    quarter = embed_dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")

    def encode(positions: torch.Tensor) -> torch.Tensor:
        angles = positions.reshape(-1, 1) * omega.reshape(1, -1)
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    embedding = torch.cat([encode(cols), encode(rows)], dim=1)
    if add_cls_token:
        embedding = torch.cat([torch.zeros(1, embed_dim, dtype=torch.float64), embedding], dim=0)
    return embedding.float().unsqueeze(0)


class RAEDecoderSelfAttention(nn.Module):
    """Multi-head self-attention on `torch.nn.functional.scaled_dot_product_attention` (flash/mem-efficient kernels)."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, length, width = hidden_states.shape

        def heads(x: torch.Tensor) -> torch.Tensor:  # [B, L, D] -> [B, heads, L, D/heads]
            return x.view(batch, length, self.num_heads, width // self.num_heads).transpose(1, 2)

        context = F.scaled_dot_product_attention(
            heads(self.query(hidden_states)), heads(self.key(hidden_states)), heads(self.value(hidden_states))
        )
        return context.transpose(1, 2).reshape(batch, length, width)


class RAEDecoderAttention(nn.Module):
    """Self-attention plus output projection; keys `attention.attention.*`, `attention.output.dense` (official)."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.attention = RAEDecoderSelfAttention(hidden_size, num_heads)
        self.output = nn.ModuleDict({"dense": nn.Linear(hidden_size, hidden_size)})

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.output["dense"](self.attention(hidden_states))


class RAEDecoderLayer(nn.Module):
    """Pre-LN transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, config: RAEConfig):
        super().__init__()
        hidden, eps = config.decoder_hidden_size, config.decoder_layer_norm_eps
        self.layernorm_before = nn.LayerNorm(hidden, eps=eps)
        self.attention = RAEDecoderAttention(hidden, config.decoder_num_attention_heads)
        self.layernorm_after = nn.LayerNorm(hidden, eps=eps)
        self.intermediate = nn.ModuleDict({"dense": nn.Linear(hidden, config.decoder_intermediate_size)})
        self.output = nn.ModuleDict({"dense": nn.Linear(config.decoder_intermediate_size, hidden)})
        self.activation = ACT2FN[config.decoder_hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states + self.attention(self.layernorm_before(hidden_states))
        mlp = self.output["dense"](self.activation(self.intermediate["dense"](self.layernorm_after(hidden_states))))
        return hidden_states + mlp


class RAEDecoder(nn.Module):
    """MAE-style ViT decoder: latent tokens `[B, L, C]` -> pixel patches -> images `[B, 3, H, W]` (normalized space)."""

    def __init__(self, config: RAEConfig):
        super().__init__()
        self.config = config
        hidden = config.decoder_hidden_size
        self.decoder_embed = nn.Linear(config.latent_channels, hidden)
        self.trainable_cls_token = nn.Parameter(torch.zeros(1, 1, hidden))
        self.register_buffer(
            "decoder_pos_embed", sincos_position_embedding_2d(hidden, config.latent_grid_size), persistent=False
        )
        self.decoder_layers = nn.ModuleList(RAEDecoderLayer(config) for _ in range(config.decoder_num_hidden_layers))
        self.decoder_norm = nn.LayerNorm(hidden, eps=config.decoder_layer_norm_eps)
        self.decoder_pred = nn.Linear(hidden, config.decoder_patch_size**2 * config.num_channels)
        self.gradient_checkpointing = False

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = self.decoder_embed(tokens)
        cls = self.trainable_cls_token.expand(hidden.shape[0], -1, -1)
        hidden = torch.cat([cls, hidden], dim=1) + self.decoder_pos_embed.to(hidden.dtype)
        for layer in self.decoder_layers:
            if self.gradient_checkpointing and self.training:
                hidden = torch.utils.checkpoint.checkpoint(layer, hidden, use_reentrant=False)
            else:
                hidden = layer(hidden)
        patches = self.decoder_pred(self.decoder_norm(hidden))[:, 1:]
        return self.unpatchify(patches)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """`[B, h*w, p*p*C]` -> `[B, C, h*p, w*p]` (patch pixels ordered row, column, channel)."""
        batch, length, _ = patches.shape
        grid, patch, channels = math.isqrt(length), self.config.decoder_patch_size, self.config.num_channels
        patches = patches.reshape(batch, grid, grid, patch, patch, channels)
        return torch.einsum("nhwpqc->nchpwq", patches).reshape(batch, channels, grid * patch, grid * patch)


class RAEPreTrainedModel(PreTrainedModel):
    config_class = RAEConfig
    config: RAEConfig
    base_model_prefix = "rae"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ("RAEDecoderLayer",)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Fresh decoder init; fixed buffers recomputed.

        `decoder_init="pytorch"` (official RAE): PyTorch's default Linear init (kaiming-uniform a=sqrt(5) weights,
        U(+-1/sqrt(fan_in)) biases), unit LayerNorms, a zero CLS token. `"mae"`: xavier-uniform weights, zero biases,
        N(0, initializer_range) CLS token (the MAE/HF ViT-MAE convention).
        """
        mae = self.config.decoder_init == "mae"
        if isinstance(module, nn.Linear):
            if mae:
                init.xavier_uniform_(module.weight)
            else:
                init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None and mae:
                init.zeros_(module.bias)
            elif module.bias is not None:
                bound = 1.0 / math.sqrt(module.in_features)
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.LayerNorm) and module.weight is not None:
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, RAEDecoder):
            if mae:
                init.normal_(module.trainable_cls_token, std=self.config.initializer_range)
            else:
                init.zeros_(module.trainable_cls_token)
            grid = self.config.latent_grid_size
            init.copy_(module.decoder_pos_embed, sincos_position_embedding_2d(self.config.decoder_hidden_size, grid))
        elif isinstance(module, RAEModel):
            shape = (self.config.num_channels, 1, 1)
            init.copy_(module.image_mean, torch.tensor(self.config.encoder_image_mean).view(shape))
            init.copy_(module.image_std, torch.tensor(self.config.encoder_image_std).view(shape))
            init.zeros_(module.latents_mean)
            init.ones_(module.latents_var)


class RAEModel(RAEPreTrainedModel):
    """Frozen encoder + trainable ViT decoder. `encode`/`decode`/`forward` take and return [0, 1] images.

    The encoder is always frozen and kept in eval mode; `model.train()` only switches the decoder and enables the
    training-time latent noise. The encoder's weights are part of the saved model, so a published RAE is
    self-contained (training checkpoints leave them out; see `RAETrainer`).
    """

    def __init__(self, config: RAEConfig):
        super().__init__(config)
        # MAE keeps every token (mask_ratio 0); SigLIP's pooling head is unused; final norm without scale/shift
        self.encoder = AutoModel.from_config(apply_config_overrides(config.encoder_config, drop_pooling_head=True))
        final_norm_without_affine(self.encoder)
        self.encoder.requires_grad_(False).eval()
        self._encoder_kwargs = self._encoder_forward_kwargs()

        self.decoder = RAEDecoder(config)
        channels, grid = config.latent_channels, config.latent_grid_size
        self.register_buffer("image_mean", torch.tensor(config.encoder_image_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(config.encoder_image_std).view(-1, 1, 1), persistent=False)
        self.register_buffer("latents_mean", torch.zeros(channels, grid, grid))
        self.register_buffer("latents_var", torch.ones(channels, grid, grid))
        self.post_init()

    @classmethod
    def from_encoder_pretrained(
        cls, encoder_name_or_path: str, encoder_input_size: int | None = None, **config_kwargs
    ) -> RAEModel:
        """Build an RAE around a pretrained encoder (hub id or local folder) with a freshly initialized decoder.

        Composite checkpoints (SigLIP/CLIP) contribute their vision tower. The image size and mean/std come from
        the encoder's image-processor config when it has one. `config_kwargs` go to `RAEConfig` (decoder size,
        noise, ...).
        """
        encoder_config = load_vision_config(encoder_name_or_path, "encoder_name_or_path")
        size, mean, std = image_processor_settings(encoder_name_or_path, TOKEN_LAYOUTS.get(encoder_config.model_type))
        config_kwargs.setdefault("encoder_image_mean", list(mean))
        config_kwargs.setdefault("encoder_image_std", list(std))
        config = RAEConfig(
            encoder_config=encoder_config, encoder_input_size=encoder_input_size or size or 224, **config_kwargs
        )
        model = cls(config)
        pretrained, info = type(model.encoder).from_pretrained(
            encoder_name_or_path, config=model.config.encoder_config, output_loading_info=True
        )
        if info["missing_keys"]:
            raise ValueError(f"Encoder weights from {encoder_name_or_path} lack {sorted(info['missing_keys'])}.")
        model.encoder.load_state_dict(pretrained.state_dict(), strict=False)
        model.config.encoder_name_or_path = encoder_name_or_path
        return model

    def _encoder_forward_kwargs(self) -> dict:
        """Extra encoder arguments: position-embedding interpolation where the encoder runs off its native size."""
        return interpolation_kwargs(self.encoder, self.config.encoder_input_size)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, then the encoder frozen and in eval mode (loading re-creates the
        parameters with `requires_grad=True`; a trainable encoder would enter the optimizer, the EMA and DDP)."""
        loaded = super().from_pretrained(*args, **kwargs)
        (loaded[0] if isinstance(loaded, tuple) else loaded).freeze_encoder()
        return loaded

    def freeze_encoder(self) -> None:
        """No gradients for the encoder and eval mode (also kept by `train()`)."""
        self.encoder.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> RAEModel:
        super().train(mode)
        self.encoder.eval()
        return self

    # ----- encoder side -----------------------------------------------------------------------------------------
    def preprocess(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[0, 1] images -> bicubic resize to the encoder input size -> encoder mean/std normalization."""
        size = self.config.encoder_input_size
        if pixel_values.shape[-2:] != (size, size):
            pixel_values = F.interpolate(pixel_values, size=(size, size), mode="bicubic", align_corners=False)
        return (pixel_values - self.image_mean) / self.image_std

    @torch.no_grad()
    def encode_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Raw patch tokens `[B, L, C]` of the frozen encoder; CLS/register tokens (the leading ones) dropped."""
        inputs = self.preprocess(pixel_values)
        kwargs = dict(self._encoder_kwargs)
        if self.config.encoder_config.model_type == "vit_mae":  # identity order (mask_ratio is 0)
            kwargs["noise"] = mae_identity_noise(inputs, self.config.encoder_patch_size)
        tokens = self.encoder(pixel_values=inputs, **kwargs).last_hidden_state
        layout = TOKEN_LAYOUTS.get(self.config.encoder_config.model_type)
        if layout is not None and not layout.normed_last_hidden_state:  # CLIP: the final norm comes after
            tokens = getattr(self.encoder, layout.final_norm)(tokens)
        num_patches = self.config.latent_grid_size**2
        if tokens.shape[1] < num_patches:
            raise ValueError(f"The encoder returned {tokens.shape[1]} tokens, fewer than the {num_patches} patches.")
        return tokens[:, tokens.shape[1] - num_patches :]

    def add_noise(self, tokens: torch.Tensor) -> torch.Tensor:
        """Training-time latent noise `z + sigma * eps` with a per-sample sigma; identity in eval mode."""
        tau = self.config.noise_tau
        if not self.training or tau == 0:
            return tokens
        shape = (tokens.shape[0], 1, 1)
        if self.config.noise_distribution == "uniform":
            sigma = tau * torch.rand(shape, device=tokens.device, dtype=tokens.dtype)
        else:
            sigma = (tau * torch.randn(shape, device=tokens.device, dtype=tokens.dtype)).abs()
        return tokens + sigma * torch.randn_like(tokens)

    def tokens_to_latents(self, tokens: torch.Tensor) -> torch.Tensor:
        """`[B, L, C]` -> `[B, C, h, w]`, standardized with the stored statistics when `normalize_latents`."""
        grid = self.config.latent_grid_size
        latents = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, grid, grid)
        if self.config.normalize_latents:
            latents = (latents - self.latents_mean) / torch.sqrt(self.latents_var + self.config.latent_norm_eps)
        return latents

    def encode(self, pixel_values: torch.Tensor, return_dict: bool = True) -> RAEEncoderOutput | tuple:
        """[0, 1] images `[B, 3, H, W]` -> latents `[B, C, h, w]` (noised only in training mode)."""
        latents = self.tokens_to_latents(self.add_noise(self.encode_tokens(pixel_values)))
        return RAEEncoderOutput(latents=latents) if return_dict else (latents,)

    # ----- decoder side -----------------------------------------------------------------------------------------
    def decode(self, latents: torch.Tensor, return_dict: bool = True) -> RAEDecoderOutput | tuple:
        """Latents `[B, C, h, w]` -> reconstructions `[B, 3, h*p, w*p]` in [0, 1] image space (unclamped)."""
        if self.config.normalize_latents:
            latents = latents * torch.sqrt(self.latents_var + self.config.latent_norm_eps) + self.latents_mean
        tokens = latents.flatten(2).transpose(1, 2)
        reconstruction = self.decoder(tokens) * self.image_std + self.image_mean
        return RAEDecoderOutput(reconstruction=reconstruction) if return_dict else (reconstruction,)

    def forward(
        self, pixel_values: torch.Tensor, return_dict: bool = True, return_encoder_tokens: bool = False, **kwargs
    ) -> RAEOutput | tuple:
        """Reconstruct [0, 1] images; returns `RAEOutput(reconstruction, latents)`. With `return_encoder_tokens`
        it also holds the noise-free encoder tokens, so a trainer can decode them again without the encoder."""
        tokens = self.encode_tokens(pixel_values)
        latents = self.tokens_to_latents(self.add_noise(tokens))
        reconstruction = self.decode(latents).reconstruction
        if not return_dict:
            return (reconstruction, latents)
        encoder_tokens = tokens if return_encoder_tokens else None
        return RAEOutput(reconstruction=reconstruction, latents=latents, encoder_tokens=encoder_tokens)

    # ----- latent statistics ------------------------------------------------------------------------------------
    @torch.no_grad()
    def set_latent_stats(self, mean: torch.Tensor | None, var: torch.Tensor) -> None:
        """Store per-channel-and-position statistics `[C, h, w]` and switch latent normalization on.

        `mean=None` keeps a zero mean (as the released DINOv2-B statistics, which only have a variance).
        """
        expected = tuple(self.latents_var.shape)
        for name, value in (("mean", mean), ("var", var)):
            if value is not None and tuple(value.shape) != expected:
                raise ValueError(f"latent {name} has shape {tuple(value.shape)}, expected {expected}.")
        self.latents_mean.copy_(mean if mean is not None else torch.zeros(expected))
        self.latents_var.copy_(var)
        self.config.normalize_latents = True

    def decoder_last_layer_weight(self) -> torch.Tensor:
        """The decoder's final prediction weight (where the adaptive GAN weight is measured)."""
        return self.decoder.decoder_pred.weight


__all__ = ["RAEDecoderOutput", "RAEEncoderOutput", "RAEModel", "RAEOutput", "RAEPreTrainedModel"]
