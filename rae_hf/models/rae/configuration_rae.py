"""Configuration of the Representation Autoencoder (RAE): a frozen vision encoder plus a ViT pixel decoder.

This file is copied next to the weights by ``save_pretrained`` (``register_for_auto_class``), so it imports nothing
from ``rae_hf``: a pushed checkpoint loads with ``trust_remote_code=True`` where this package is not installed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.utils.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

# Decoder sizes of the RAE paper (MAE-style ViT decoders): hidden, layers, heads, MLP.
DECODER_PRESETS: dict[str, dict[str, int]] = {
    "ViT-S": {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6, "intermediate_size": 1536},
    "ViT-B": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    "ViT-L": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096},
    "ViT-XL": {"hidden_size": 1152, "num_hidden_layers": 28, "num_attention_heads": 16, "intermediate_size": 4096},
}
DEFAULT_DECODER_PRESET = "ViT-XL"  # sizes of a decoder given neither a preset nor sizes
NOISE_DISTRIBUTIONS = ("uniform", "half_normal")
DECODER_INITS = ("pytorch", "mae")


# Copied from rae_hf.models.presets.apply_preset
def apply_preset(
    config: Any,
    presets: Mapping[str, Mapping[str, Any]],
    preset: str | None,
    argument: str,
    prefix: str = "",
    defaults: Mapping[str, Any] | None = None,
) -> None:
    """Fill `config.<prefix><field>` from `presets[preset]` (then from `defaults`) wherever it is still `None`.

    Fields a preset sets default to `None` in the config, so "not given" is visible; an explicit value is never
    replaced. An unknown `preset` raises a `ValueError` naming `argument` and listing the known names.
    """
    if preset is not None and preset not in presets:
        raise ValueError(
            f"{argument}={preset!r} is unknown; choose one of {sorted(presets)} or set the fields yourself."
        )
    values = {**(defaults or {}), **(presets[preset] if preset is not None else {})}
    for field, value in values.items():
        if getattr(config, prefix + field, None) is None:
            setattr(config, prefix + field, value)


class RAEConfig(PreTrainedConfig):
    r"""Configuration of [`RAEModel`].

    Args:
        encoder_config (`PreTrainedConfig` or `dict`):
            Config of the frozen vision encoder (DINOv2 with registers, SigLIP(2) vision tower, ViT-MAE, ViT, ...).
            It is stored inside this config, so a saved RAE rebuilds its encoder without the network.
        encoder_input_size (`int`, defaults to 224):
            Images are resized (bicubic) to this size before the encoder. 224 for DINOv2-B, 256 for SigLIP2/MAE.
        encoder_image_mean / encoder_image_std (`list[float]`):
            The encoder's image-processor normalization; the decoder output is mapped back with the same values.
        decoder_preset (`str`, *optional*):
            One of `"ViT-S"`, `"ViT-B"`, `"ViT-L"`, `"ViT-XL"`: fills the four `decoder_*` size fields that are not
            given explicitly (explicit arguments win; with neither, the ViT-XL sizes).
        decoder_hidden_size / decoder_num_hidden_layers / decoder_num_attention_heads / decoder_intermediate_size:
            Size of the ViT decoder (custom sizes allowed; `None` = from the preset).
        decoder_patch_size (`int`, defaults to 16):
            Pixels per decoder token side; output size = token grid x patch (16x16 tokens -> 256 px).
        noise_tau (`float`, defaults to 0.8):
            Training-time latent noise strength (0 disables it). Never applied in eval mode.
        noise_distribution (`str`, defaults to `"uniform"`):
            `"uniform"`: sigma = tau * U(0, 1) per sample (official code);
            `"half_normal"`: sigma = |N(0, tau^2)| (paper).
        normalize_latents (`bool`, defaults to `False`):
            Whether `encode` standardizes latents with the stored per-channel-and-position `latents_mean`/`latents_var`
            (set to `True` by `set_latent_stats`, e.g. through `run_rae.py --compute_latent_stats`).
        decoder_init (`str`, defaults to `"pytorch"`):
            Initialization of a fresh decoder. `"pytorch"` (official RAE code): PyTorch's default Linear init and a
            zero CLS token; `"mae"`: xavier-uniform weights, zero biases and an N(0, `initializer_range`) CLS token.
    """

    model_type = "rae"
    sub_configs_defaults: ClassVar[dict[str, SubConfigSpec]] = {
        "encoder_config": SubConfigSpec(
            config_class=AutoConfig, model_type="dinov2_with_registers", init_kwargs={"patch_size": 14}
        ),
    }

    encoder_config: PreTrainedConfig | dict | None = None
    encoder_input_size: int = 224
    encoder_image_mean: list[float] | None = None
    encoder_image_std: list[float] | None = None
    decoder_preset: str | None = None
    decoder_hidden_size: int | None = None
    decoder_num_hidden_layers: int | None = None
    decoder_num_attention_heads: int | None = None
    decoder_intermediate_size: int | None = None
    decoder_hidden_act: str = "gelu"
    decoder_layer_norm_eps: float = 1e-12
    decoder_patch_size: int = 16
    num_channels: int = 3
    noise_tau: float = 0.8
    noise_distribution: str = "uniform"
    normalize_latents: bool = False
    latent_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    decoder_init: str = "pytorch"

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        defaults = DECODER_PRESETS[DEFAULT_DECODER_PRESET]
        apply_preset(self, DECODER_PRESETS, self.decoder_preset, "decoder_preset", "decoder_", defaults)
        if self.encoder_image_mean is None:
            self.encoder_image_mean = list(IMAGENET_DEFAULT_MEAN)
        if self.encoder_image_std is None:
            self.encoder_image_std = list(IMAGENET_DEFAULT_STD)
        self.encoder_image_mean = [float(v) for v in self.encoder_image_mean]
        self.encoder_image_std = [float(v) for v in self.encoder_image_std]
        self._validate()

    def _validate(self) -> None:
        """Reject values that would fail deep inside the model; every message names the argument."""
        for name in (
            "decoder_hidden_size",
            "decoder_num_hidden_layers",
            "decoder_num_attention_heads",
            "decoder_intermediate_size",
            "decoder_patch_size",
            "num_channels",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}={value!r} must be a positive integer.")
        if getattr(self.encoder_config, "patch_size", None) is None:
            raise ValueError(
                f"encoder_config is a {self.encoder_config.model_type!r} config without patch_size: the RAE needs a "
                "vision encoder (DINOv2, SigLIP, ViT-MAE, ...)."
            )
        patch = self.encoder_patch_size
        if self.encoder_input_size <= 0 or self.encoder_input_size % patch != 0:
            raise ValueError(
                f"encoder_input_size={self.encoder_input_size} must be a positive multiple of the encoder patch size "
                f"{patch} (e.g. 224 for DINOv2 patch 14, 256 for SigLIP2/MAE patch 16)."
            )
        if self.decoder_hidden_size % self.decoder_num_attention_heads != 0:
            raise ValueError(
                f"decoder_hidden_size={self.decoder_hidden_size} must be divisible by "
                f"decoder_num_attention_heads={self.decoder_num_attention_heads}."
            )
        if self.decoder_hidden_size % 4 != 0:
            raise ValueError(f"decoder_hidden_size={self.decoder_hidden_size} must be divisible by 4 (2-D sin-cos).")
        if self.noise_tau < 0:
            raise ValueError(f"noise_tau={self.noise_tau} must be >= 0 (0 disables training noise).")
        if self.noise_distribution not in NOISE_DISTRIBUTIONS:
            raise ValueError(f"noise_distribution={self.noise_distribution!r} must be one of {NOISE_DISTRIBUTIONS}.")
        if self.decoder_init not in DECODER_INITS:
            raise ValueError(f"decoder_init={self.decoder_init!r} must be one of {DECODER_INITS}.")
        for name in ("encoder_image_mean", "encoder_image_std"):
            if len(getattr(self, name)) != self.num_channels:
                raise ValueError(f"{name} needs {self.num_channels} values, got {getattr(self, name)}.")
        if min(self.encoder_image_std) <= 0:
            raise ValueError(f"encoder_image_std must be positive, got {self.encoder_image_std}.")
        if self.latent_norm_eps <= 0:
            raise ValueError(f"latent_norm_eps={self.latent_norm_eps} must be positive.")

    @property
    def encoder_patch_size(self) -> int:
        patch = self.encoder_config.patch_size
        return int(patch[0] if isinstance(patch, (list, tuple)) else patch)

    @property
    def latent_grid_size(self) -> int:
        """Tokens per side of the encoder's patch grid (16 for DINOv2-B at 224)."""
        return self.encoder_input_size // self.encoder_patch_size

    @property
    def latent_channels(self) -> int:
        return int(self.encoder_config.hidden_size)

    @property
    def image_size(self) -> int:
        """Side of the reconstructed image: token grid x decoder patch (224 in -> 256 out for DINOv2-B)."""
        return self.latent_grid_size * self.decoder_patch_size


__all__ = ["DECODER_PRESETS", "DEFAULT_DECODER_PRESET", "RAEConfig", "apply_preset"]
