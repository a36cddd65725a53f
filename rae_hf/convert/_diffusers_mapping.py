"""Mapping between `RAEModel` and diffusers' `AutoencoderRAE`: decoder keys, encoder weights, encoder configs and
latent statistics (used by `rae_hf.convert.rae_diffusers`; a helper module, not a converter).

Key mapping (decoder; ours = official RAE = HF ViTMAE naming, relative to `decoder.`)
--------------------------------------------------------------------------------------
| ours / official                                  | diffusers `AutoencoderRAE`                 |
|--------------------------------------------------|--------------------------------------------|
| `decoder_embed.{weight,bias}`                    | same                                       |
| `trainable_cls_token`                            | same                                       |
| `decoder_layers.N.layernorm_before.*`            | same                                       |
| `decoder_layers.N.attention.attention.query.*`   | `decoder_layers.N.attention.to_q.*`        |
| `decoder_layers.N.attention.attention.key.*`     | `decoder_layers.N.attention.to_k.*`        |
| `decoder_layers.N.attention.attention.value.*`   | `decoder_layers.N.attention.to_v.*`        |
| `decoder_layers.N.attention.output.dense.*`      | `decoder_layers.N.attention.to_out.0.*`    |
| `decoder_layers.N.layernorm_after.*`             | same                                       |
| `decoder_layers.N.intermediate.dense.*`          | same                                       |
| `decoder_layers.N.output.dense.*`                | same                                       |
| `decoder_norm.*`, `decoder_pred.*`               | same                                       |
| `decoder_pos_embed` (fixed, not saved)           | same (fixed, not saved); official: saved   |

Rest of the model:
| ours                                              | diffusers                                                    |
|---------------------------------------------------|--------------------------------------------------------------|
| `encoder.*` (HF model, final norm without affine) | `encoder.*` (same HF classes, final norm affine set to None) |
| config `encoder_config`                           | `encoder_type` + `encoder_hidden_size/patch_size/num_hidden_ |
|                                                   | layers`; diffusers builds the HF config (head dim 64, image  |
|                                                   | size 518 / 256 / 224, other fields at their defaults)        |
| config `encoder_image_mean` / `encoder_image_std` | buffers `encoder_mean` / `encoder_std` (`encoder_norm_*`)    |
| buffers `latents_mean`, `latents_var` `[C, h, w]` | buffers `_latents_mean`, `_latents_std` (`latents_mean/std`) |
| config `encoder_input_size`                       | config `encoder_input_size`                                  |
| config `decoder_patch_size`                       | config `patch_size`                                          |
| config `decoder_*` sizes                          | config `decoder_*` sizes (act gelu, LayerNorm eps 1e-12)     |
| config `noise_tau` (`noise_distribution` uniform) | config `noise_tau` (uniform only)                            |
| (no scaling factor: folded into the statistics)   | config `scaling_factor`                                      |

Encoder types: `dinov2` = `dinov2_with_registers` (1 CLS + 4 registers dropped), `siglip2` = `siglip_vision_model`
(diffusers uses the SigLIP-1 vision class; our RAE drops its unused pooling `head.*`, written back as zeros), `mae` =
`vit_mae` (mask ratio 0, identity order). Released diffusers SigLIP checkpoints saved under transformers 4 carry
`encoder.vision_model.*` keys; they are mapped to the flat transformers-5 layout.

Latent normalization and the epsilon mismatch
---------------------------------------------
* official RAE and ours: `z_n = (z - mean) / sqrt(var + 1e-5)` (`latent_norm_eps`).
* diffusers: `z_n = scaling_factor * (z - mean) / (std + 1e-5)`; its converter stored `std = sqrt(var + 1e-5)`, so its
  divisor is `sqrt(var + 1e-5) + 1e-5`: relative deviation from the official model `1e-5 / sqrt(var + 1e-5)` (1e-5 at
  var 1, 1e-4 at var 0.01). Even without statistics diffusers divides by `1 + 1e-5`.
* `latent_stats_convention="diffusers"` (default) reproduces diffusers' OUTPUTS: `var = ((std + 1e-5) / s)^2 - 1e-5`,
  so `sqrt(var + 1e-5) == (std + 1e-5) / s` in exact arithmetic. The residual is the float32 storage of `var`
  (relative error <= 6e-8 on var, <= 3e-8 on the divisor); measured on tiny dinov2/siglip2/mae models:
  latents within 4.8e-7 (1 float32 ulp at |z| ~ 5-8), reconstructions within 4.5e-7, both directions. If
  `(std + 1e-5) / s < sqrt(1e-5)` the needed var is negative: it is clamped to 0 with a warning (never seen in
  real statistics). Back to diffusers: `std = s * sqrt(var + 1e-5) - 1e-5`; a round trip changes `std` by at most
  ~1 float32 ulp.
* `latent_stats_convention="official"` inverts diffusers' converter instead: `var = (std / s)^2 - 1e-5` recovers the
  official statistics and our model then reproduces the official RAE; it differs from diffusers' outputs by the
  factor `std / (std + 1e-5)`. Back to diffusers: `std = s * sqrt(var + 1e-5)` (diffusers' own converter).
* Statistics that make diffusers' normalization the identity (mean 0, divisor 1) map to `normalize_latents=False`;
  `normalize_latents=False` maps back to a one-element `latents_std` (`1 - 1e-5` under the "diffusers" convention,
  the default `None` under "official"). Constant statistics are written as one-element lists.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers import Dinov2WithRegistersConfig, PreTrainedConfig, SiglipVisionConfig, ViTMAEConfig

from ..models.checkpoint_io import load_exact
from ..models.rae.backbone_layouts import TOKEN_LAYOUTS

__all__ = [
    "check_convention",
    "compact",
    "decoder_key_from_diffusers",
    "decoder_key_to_diffusers",
    "diffusers_encoder_config",
    "diffusers_stats_to_rae",
    "load_encoder",
    "rae_stats_to_diffusers",
]

logger = logging.getLogger(__name__)

DIFFUSERS_LATENT_EPS = 1e-5  # diffusers divides by (std + 1e-5)
DIFFUSERS_DECODER_LAYER_NORM_EPS = 1e-12
DIFFUSERS_POS_EMBED_BASE_GRID = 16  # get_2d_sincos_pos_embed(base_size=16): positions scaled by 16 / grid
DIFFUSERS_HEAD_DIM = 64
LATENT_STATS_CONVENTIONS = ("diffusers", "official")
# |divisor - 1| below this (about 3 float32 ulps at 1) counts as an identity normalization.
IDENTITY_TOLERANCE = 4e-7

ENCODER_TYPE_TO_MODEL_TYPE = {"dinov2": "dinov2_with_registers", "siglip2": "siglip_vision_model", "mae": "vit_mae"}
MODEL_TYPE_TO_ENCODER_TYPE = {v: k for k, v in ENCODER_TYPE_TO_MODEL_TYPE.items()}
# Encoder config fields that change the computation or the weight shapes (compared before writing diffusers).
ARCHITECTURE_FIELDS = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "mlp_ratio",
    "patch_size",
    "image_size",
    "num_channels",
    "num_register_tokens",
    "layer_norm_eps",
    "hidden_act",
    "qkv_bias",
    "use_swiglu_ffn",
)

# ----------------------------------------------------------------------------------------------------------------------
# Key mapping
# ----------------------------------------------------------------------------------------------------------------------
_ATTENTION_TO_DIFFUSERS = {
    "attention.query": "to_q",
    "attention.key": "to_k",
    "attention.value": "to_v",
    "output.dense": "to_out.0",
}
_ATTENTION_FROM_DIFFUSERS = {v: k for k, v in _ATTENTION_TO_DIFFUSERS.items()}
_OURS_ATTENTION_KEY = re.compile(
    r"^(decoder_layers\.\d+\.attention)\.(attention\.query|attention\.key|attention\.value|output\.dense)\.(\w+)$"
)
_DIFFUSERS_ATTENTION_KEY = re.compile(r"^(decoder_layers\.\d+\.attention)\.(to_q|to_k|to_v|to_out\.0)\.(\w+)$")


def decoder_key_to_diffusers(key: str) -> str:
    """Our/official decoder key (relative to `decoder.`) -> diffusers' (only the attention projections change)."""
    match = _OURS_ATTENTION_KEY.match(key)
    return f"{match[1]}.{_ATTENTION_TO_DIFFUSERS[match[2]]}.{match[3]}" if match else key


def decoder_key_from_diffusers(key: str) -> str:
    """diffusers' decoder key (relative to `decoder.`) -> ours/official."""
    match = _DIFFUSERS_ATTENTION_KEY.match(key)
    return f"{match[1]}.{_ATTENTION_FROM_DIFFUSERS[match[2]]}.{match[3]}" if match else key


def _final_norm_keys(encoder: nn.Module) -> set[str]:
    layout = TOKEN_LAYOUTS.get(getattr(encoder.config, "model_type", ""))
    name = layout.final_norm if layout is not None else ""
    return {f"{prefix}{name}.{p}" for prefix in ("", "vision_model.") for p in ("weight", "bias")} if name else set()


def load_encoder(target: nn.Module, source: Mapping[str, torch.Tensor], what: str) -> None:
    """Copy encoder weights between ours and diffusers' (the same HF classes) with explicit, tolerated differences.

    Tolerated: a `vision_model.` prefix (SigLIP saved under transformers 4); a SigLIP pooling `head.*` that one side
    lacks (dropped, or written as zeros); final-norm affine parameters that one side lacks (dropped where the target
    has none, identity where the source has none). Anything else missing or unexpected is an error.
    """
    wanted = target.state_dict()
    final_norm = _final_norm_keys(target)
    state: dict[str, torch.Tensor] = {}
    for key, value in source.items():
        alternatives = [key, key.removeprefix("vision_model."), f"vision_model.{key}"]
        match = next((k for k in alternatives if k in wanted), None)
        if match is not None:
            state[match] = value
        elif key.removeprefix("vision_model.").startswith("head.") or key in final_norm:
            logger.info("%s: dropping %s (unused by the RAE encoder).", what, key)
        else:
            state[key] = value  # reported as unexpected by load_exact
    for key, value in wanted.items():
        if key in state:
            continue
        if key.removeprefix("vision_model.").startswith("head."):
            state[key] = torch.zeros_like(value)  # unused SigLIP pooling head
        elif key in final_norm:
            state[key] = torch.ones_like(value) if key.endswith("weight") else torch.zeros_like(value)
    load_exact(target, state, what)


# ----------------------------------------------------------------------------------------------------------------------
# Latent statistics
# ----------------------------------------------------------------------------------------------------------------------
def check_convention(convention: str) -> None:
    if convention not in LATENT_STATS_CONVENTIONS:
        raise ValueError(f"latent_stats_convention={convention!r} must be one of {LATENT_STATS_CONVENTIONS}.")


def diffusers_stats_to_rae(
    mean: torch.Tensor,
    std: torch.Tensor,
    scaling_factor: float = 1.0,
    convention: str = "diffusers",
    eps: float = 1e-5,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """diffusers `(latents_mean, latents_std, scaling_factor)` -> our `(mean, var)` (float64), or `(None, None)` when
    diffusers' normalization is the identity. See the module docstring for the two conventions."""
    check_convention(convention)
    mean, std = mean.double(), std.double()
    divisor = (std + DIFFUSERS_LATENT_EPS if convention == "diffusers" else std) / float(scaling_factor)
    if bool((mean == 0).all()) and bool(((divisor - 1).abs() <= IDENTITY_TOLERANCE).all()):
        return None, None
    if bool((divisor <= 0).any()):
        raise ValueError("diffusers latents_std (+ 1e-5) / scaling_factor must be positive everywhere.")
    var = divisor**2 - eps
    negative = int((var < 0).sum())
    if negative:
        logger.warning(
            "%d latent divisors are below sqrt(latent_norm_eps)=%.2e and cannot be represented as sqrt(var + eps); "
            "their variance is clamped to 0 (these elements will differ from diffusers).",
            negative,
            math.sqrt(eps),
        )
        var = var.clamp_min(0)
    return mean, var


def rae_stats_to_diffusers(
    mean: torch.Tensor,
    var: torch.Tensor,
    normalize: bool,
    scaling_factor: float = 1.0,
    convention: str = "diffusers",
    eps: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Our `(latents_mean, latents_var, normalize_latents)` -> diffusers `(latents_mean, latents_std)` (float64)."""
    check_convention(convention)
    if normalize:
        mean, divisor = mean.double(), torch.sqrt(var.double() + eps)
    else:
        mean, divisor = torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
    std = divisor * float(scaling_factor) - (DIFFUSERS_LATENT_EPS if convention == "diffusers" else 0.0)
    if bool((std <= 0).any()):
        raise ValueError("The latent divisor times scaling_factor must exceed 1e-5 for diffusers' (std + 1e-5).")
    return mean, std


def compact(value: torch.Tensor) -> torch.Tensor | list[float]:
    """A constant tensor becomes a one-element list (diffusers broadcasts it); others stay float32 tensors."""
    value = value.float()
    if bool((value == value.flatten()[0]).all()):
        return [float(value.flatten()[0])]
    return value


def diffusers_encoder_config(config: Mapping[str, Any]) -> PreTrainedConfig:
    """The HF encoder config diffusers' `AutoencoderRAE` builds for its `encoder_type` (no download)."""
    encoder_type = config["encoder_type"]
    hidden = int(config["encoder_hidden_size"])
    common = dict(
        hidden_size=hidden,
        patch_size=int(config["encoder_patch_size"]),
        num_attention_heads=hidden // DIFFUSERS_HEAD_DIM,
        num_hidden_layers=int(config["encoder_num_hidden_layers"]),
    )
    if encoder_type == "dinov2":
        return Dinov2WithRegistersConfig(image_size=518, **common)
    if encoder_type == "siglip2":
        return SiglipVisionConfig(image_size=256, **common)
    if encoder_type == "mae":
        return ViTMAEConfig(image_size=224, mask_ratio=0.0, **common)
    raise ValueError(
        f"Unknown diffusers encoder_type={encoder_type!r}; expected one of {sorted(ENCODER_TYPE_TO_MODEL_TYPE)}."
    )
