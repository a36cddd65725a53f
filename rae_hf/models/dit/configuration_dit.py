"""Configuration of DiT-DH (`DiTwDDTHead` of the RAE paper, arXiv 2510.11690): a LightningDiT encoder plus a wide,
shallow DDT head, trained by flow matching on normalized RAE latents.

This file is copied next to the weights by ``save_pretrained`` (``register_for_auto_class``), so it imports nothing
from ``rae_hf``: a pushed checkpoint loads with ``trust_remote_code=True`` where this package is not installed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import PreTrainedConfig

# Encoder sizes (width, depth, heads). S and XL are the published ones (official configs); B and L are ours, with
# the widths of DiT-B/L. Every preset uses the published head: width 2048, 2 blocks, 16 heads.
DITDH_PRESETS: dict[str, dict[str, int]] = {
    "DiTDH-S": {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6},
    "DiTDH-B": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12},
    "DiTDH-L": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16},
    "DiTDH-XL": {"hidden_size": 1152, "num_hidden_layers": 28, "num_attention_heads": 16},
}
DEFAULT_PRESET = "DiTDH-XL"  # sizes of a config given neither a preset nor sizes (the paper's model)


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


def swiglu_intermediate_size(hidden_size: int, mlp_ratio: float) -> int:
    """SwiGLU width of the official LightningDiT block: `int(2/3 * int(mlp_ratio * d))` (1024, 3072, 5461 for
    d = 384, 1152, 2048)."""
    return int(2 / 3 * int(hidden_size * mlp_ratio))


class DiTDHConfig(PreTrainedConfig):
    r"""Configuration of [`DiTDHModel`]. Defaults: DiTDH-XL on DINOv2-B latents at 256 px (768 x 16 x 16, 1000
    classes).

    Use `DiTDHConfig.from_preset("DiTDH-S", num_classes=10)`; presets `DiTDH-S` / `-B` / `-L` / `-XL` set the encoder
    size (S: 384/12/6, B: 768/12/12, L: 1024/24/16, XL: 1152/28/16 as width/depth/heads; S and XL are the published
    ones, B and L follow DiT-B/L). Explicit arguments always win.

    Args:
        preset (`str`, *optional*): fills `hidden_size`, `num_hidden_layers`, `num_attention_heads` where not given.
        in_channels (`int`): latent channels (768 for DINOv2-B); the output has the same shape as the input.
        input_size (`int`): latent grid side (16 at 256 px, 32 at 512 px).
        patch_size (`int`): tokens per latent position; only 1 (the official code works only with 1).
        hidden_size / num_hidden_layers / num_attention_heads: encoder (LightningDiT) width, depth and heads.
        intermediate_size (`int`, *optional*): encoder SwiGLU width; default `int(2/3 * int(mlp_ratio * width))`.
        head_hidden_size / head_num_layers / head_num_attention_heads: DDT head width (2048), depth (2), heads (16).
        head_intermediate_size (`int`, *optional*): head SwiGLU width; default as for the encoder (5461).
        mlp_ratio (`float`): MLP ratio the default SwiGLU widths derive from (4).
        num_classes (`int`): class labels `0..num_classes-1`; label `num_classes` is the null class (its table row
            always exists).
        class_dropout_prob (`float`): label-dropout probability of training (0.1). The model never drops labels
            itself: the trainer does (`rae_hf.diffusion.drop_labels`), so `forward` is deterministic.
        fourier_embedding_size (`int`): frequencies of the Gaussian-Fourier time embedding (256).
        fourier_scale (`float`): std of its frozen random frequencies W (1).
        rms_norm_eps (`float`): epsilon of every RMSNorm (1e-6).
        rope_theta (`float`): RoPE base (10000).
        initializer_range (`float`): std of the class table and time-MLP weights (0.02).
        time_shift (`float`, *optional*): the time shift `s` the model was trained with, the sampling default of
            `RAEDiTPipeline`; None means RAE's `sqrt(C h w / 4096)` of the latent shape. The trainer records it
            when training used another one (`--time_shift_dim`, `--time_shift_base`).
    """

    model_type = "dit_dh"

    preset: str | None = None
    in_channels: int = 768
    input_size: int = 16
    patch_size: int = 1
    hidden_size: int | None = None
    num_hidden_layers: int | None = None
    num_attention_heads: int | None = None
    intermediate_size: int | None = None
    head_hidden_size: int = 2048
    head_num_layers: int = 2
    head_num_attention_heads: int = 16
    head_intermediate_size: int | None = None
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    class_dropout_prob: float = 0.1
    fourier_embedding_size: int = 256
    fourier_scale: float = 1.0
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    initializer_range: float = 0.02
    time_shift: float | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        apply_preset(self, DITDH_PRESETS, self.preset, "preset", defaults=DITDH_PRESETS[DEFAULT_PRESET])
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio={self.mlp_ratio} must be positive.")
        if self.intermediate_size is None:
            self.intermediate_size = swiglu_intermediate_size(self.hidden_size, self.mlp_ratio)
        if self.head_intermediate_size is None:
            self.head_intermediate_size = swiglu_intermediate_size(self.head_hidden_size, self.mlp_ratio)
        self._validate()

    @classmethod
    def from_preset(cls, name: str, **overrides) -> DiTDHConfig:
        """`"DiTDH-S" | "DiTDH-B" | "DiTDH-L" | "DiTDH-XL"`; `overrides` (explicit arguments) replace preset values."""
        return cls(preset=name, **overrides)

    def _validate(self) -> None:
        """Reject values that would fail deep inside the model; every message names the argument."""
        for name in (
            "in_channels",
            "input_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "head_hidden_size",
            "head_num_layers",
            "head_num_attention_heads",
            "head_intermediate_size",
            "fourier_embedding_size",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}={value!r} must be a positive integer.")
        if self.patch_size != 1:
            raise ValueError(f"patch_size={self.patch_size}: DiT-DH supports only patch_size=1 (as the official code).")
        for width, heads in (("hidden_size", "num_attention_heads"), ("head_hidden_size", "head_num_attention_heads")):
            d, h = getattr(self, width), getattr(self, heads)
            if d % h != 0:
                raise ValueError(f"{width}={d} must be divisible by {heads}={h}.")
            if (d // h) % 4 != 0:
                raise ValueError(
                    f"{width}/{heads} = {d // h} (the head size) must be a multiple of 4: 2-D RoPE rotates pairs on "
                    "two axes (and so the width suits the 2-D sin-cos positions)."
                )
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 0:
            raise ValueError(f"num_classes={self.num_classes!r} must be an integer >= 0 (0: unconditional only).")
        if not 0.0 <= self.class_dropout_prob < 1.0:
            raise ValueError(f"class_dropout_prob={self.class_dropout_prob} must be in [0, 1).")
        for name in ("fourier_scale", "rms_norm_eps", "rope_theta", "initializer_range"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be positive.")
        if self.time_shift is not None and (
            isinstance(self.time_shift, bool) or not isinstance(self.time_shift, int | float) or self.time_shift <= 0
        ):
            raise ValueError(f"time_shift={self.time_shift!r} must be a positive number (or None: from the latents).")

    @property
    def null_class(self) -> int:
        """The label meaning "no class" (classifier-free guidance, unconditional sampling)."""
        return self.num_classes

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """`(C, h, w)` of the latents the model denoises."""
        return (self.in_channels, self.input_size, self.input_size)


__all__ = ["DEFAULT_PRESET", "DITDH_PRESETS", "DiTDHConfig", "apply_preset", "swiglu_intermediate_size"]
