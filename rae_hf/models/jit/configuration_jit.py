"""Configuration of JiT ("Just image Transformers", Li & He, arXiv 2511.13720): a plain ViT that denoises pixels.

This file is copied next to the weights by ``save_pretrained`` (``register_for_auto_class``), so it imports nothing
from ``rae_hf``: a pushed checkpoint loads with ``trust_remote_code=True`` where this package is not installed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import PreTrainedConfig

# Sizes of the paper (Table 9; G is paper-only): width, depth, heads, patch-embedding bottleneck, first block that
# sees the in-context class tokens, and the dropout of the middle blocks (`--proj_dropout` of the official code).
JIT_SIZES: dict[str, dict[str, float]] = {
    "B": dict(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        bottleneck_dim=128,
        in_context_start=4,
        dropout=0.0,
    ),
    "L": dict(
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        bottleneck_dim=128,
        in_context_start=8,
        dropout=0.0,
    ),
    "H": dict(
        hidden_size=1280,
        num_hidden_layers=32,
        num_attention_heads=16,
        bottleneck_dim=256,
        in_context_start=10,
        dropout=0.2,
    ),
    "G": dict(
        hidden_size=1664,
        num_hidden_layers=40,
        num_attention_heads=16,
        bottleneck_dim=256,
        in_context_start=10,
        dropout=0.2,
    ),
}
# Published (size, patch) settings, 16 patches per side: /16 at 256, /32 at 512, B/4 at 64 (a paper ablation).
PUBLISHED_PRESETS = ("JiT-B/4", "JiT-B/16", "JiT-B/32", "JiT-L/16", "JiT-L/32", "JiT-H/16", "JiT-H/32", "JiT-G/16")
JIT_PRESETS: dict[str, dict[str, float]] = {
    name: dict(JIT_SIZES[name[4]], patch_size=int(name[6:]), image_size=16 * int(name[6:]))
    for name in PUBLISHED_PRESETS
}
DEFAULT_PRESET = "JiT-B/16"  # sizes of a config given neither a preset nor sizes
PREDICTION_TYPES = ("x", "eps", "v")


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


def swiglu_hidden_size(hidden_size: int, mlp_ratio: float = 4.0) -> int:
    """SwiGLU width of the official code: int(int(mlp_ratio * d) * 2 / 3) (2048 for B, 2730 L, 3413 H)."""
    return int(int(hidden_size * mlp_ratio) * 2 / 3)


class JiTConfig(PreTrainedConfig):
    r"""Configuration of [`JiTModel`]. Defaults are JiT-B/16 at 256x256 on ImageNet (1000 classes).

    Use `JiTConfig(preset="JiT-B/4", num_classes=10)` (or `JiTConfig.from_preset(...)`): a published name of
    `JIT_PRESETS` (16 patches per side: 64 px for /4, 256 for /16, 512 for /32); explicit arguments always win, so
    another patch size is `preset="JiT-B/16", patch_size=8, image_size=128`.

    Args:
        preset (`str`, *optional*): fills the size fields below that are not given (`None`); with neither a preset
            nor sizes, those of `DEFAULT_PRESET` (JiT-B/16). An unknown name is an error listing the known ones.
        image_size (`int`): side of the square images; must be a multiple of `patch_size`.
        patch_size (`int`): pixels per token side.
        num_channels (`int`): image channels (3).
        hidden_size / num_hidden_layers / num_attention_heads: transformer size. `hidden_size / heads` must be a
            multiple of 4 (2-D RoPE) and `hidden_size` a multiple of 4 (2-D sin-cos embedding).
        intermediate_size (`int`, *optional*): SwiGLU width; default `int(int(4 d) * 2 / 3)` as the official code.
        bottleneck_dim (`int`): width of the linear patch-embedding bottleneck (p*p*3 -> bottleneck -> d).
        num_classes (`int`): class labels `0..num_classes-1`; label `num_classes` is the null (unconditional) class.
        num_in_context_tokens (`int`): class tokens prepended before block `in_context_start` (32; 0 disables).
        in_context_start (`int`): 0-based block index where the class tokens join.
        dropout (`float`): dropout of the middle blocks (depth//4 <= i < 3*(depth//4)), on the attention output and
            the SwiGLU hidden; 0.2 for H/G, 0 for B/L.
        attention_dropout (`float`): attention-probability dropout (0 in the paper).
        rms_norm_eps (`float`): epsilon of every RMSNorm (1e-6).
        rope_theta (`float`): RoPE base (10000).
        initializer_range (`float`): std of the class table, time-MLP weights and in-context embedding (0.02).
        noise_scale (`float`, *optional*): std of the noise at t = 0; default `max(1, image_size / 256)` (paper: 1,
            2, 4 at 256, 512, 1024; the official default 1.0 below 256, where the paper publishes nothing).
        t_eps (`float`): clamp of `1 - t` when turning a clean-image prediction into a velocity (0.05).
        prediction_type (`str`): what the network outputs: `"x"` (clean image, paper), `"eps"` or `"v"`.
    """

    model_type = "jit"

    preset: str | None = None
    image_size: int | None = None
    patch_size: int | None = None
    num_channels: int = 3
    hidden_size: int | None = None
    num_hidden_layers: int | None = None
    num_attention_heads: int | None = None
    intermediate_size: int | None = None
    bottleneck_dim: int | None = None
    num_classes: int = 1000
    num_in_context_tokens: int = 32
    in_context_start: int | None = None
    dropout: float | None = None
    attention_dropout: float = 0.0
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    initializer_range: float = 0.02
    noise_scale: float | None = None
    t_eps: float = 0.05
    prediction_type: str = "x"

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        apply_preset(self, JIT_PRESETS, self.preset, "preset", defaults=JIT_PRESETS[DEFAULT_PRESET])
        if self.intermediate_size is None:
            self.intermediate_size = swiglu_hidden_size(self.hidden_size)
        if self.noise_scale is None:  # official: 1.0 (the CLI default) at <= 256 px, 2.0 at 512, 4.0 at 1024
            self.noise_scale = max(1.0, self.image_size / 256)
        self._validate()

    @classmethod
    def from_preset(cls, name: str, **overrides) -> JiTConfig:
        """`JiTConfig(preset=name, **overrides)`, where an override of `None` means "not given"."""
        return cls(preset=name, **{key: value for key, value in overrides.items() if value is not None})

    def _validate(self) -> None:
        positive = (
            "image_size",
            "patch_size",
            "num_channels",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "bottleneck_dim",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be positive.")
        if self.image_size % self.patch_size != 0:
            raise ValueError(f"image_size={self.image_size} must be a multiple of patch_size={self.patch_size}.")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size={self.hidden_size} must be divisible by num_attention_heads={self.num_attention_heads}."
            )
        if self.hidden_size % 4 != 0:
            raise ValueError(f"hidden_size={self.hidden_size} must be a multiple of 4 (2-D sin-cos embedding).")
        if (self.hidden_size // self.num_attention_heads) % 4 != 0:
            raise ValueError(
                f"head size hidden_size/num_attention_heads={self.hidden_size // self.num_attention_heads} must be "
                "a multiple of 4 (2-D RoPE rotates pairs on two axes)."
            )
        if self.num_classes < 0:
            raise ValueError(f"num_classes={self.num_classes} must be >= 0 (0: unconditional only).")
        if self.num_in_context_tokens < 0:
            raise ValueError(f"num_in_context_tokens={self.num_in_context_tokens} must be >= 0.")
        if self.num_in_context_tokens and not 0 <= self.in_context_start < self.num_hidden_layers:
            raise ValueError(
                f"in_context_start={self.in_context_start} must be a block index in [0, {self.num_hidden_layers})."
            )
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must be in [0, 1).")
        for name in ("rms_norm_eps", "rope_theta", "initializer_range", "noise_scale", "t_eps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be positive.")
        if self.t_eps >= 1:
            raise ValueError(f"t_eps={self.t_eps} must be < 1.")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type={self.prediction_type!r} must be one of {PREDICTION_TYPES}.")

    @property
    def grid_size(self) -> int:
        """Tokens per image side."""
        return self.image_size // self.patch_size

    @property
    def null_class(self) -> int:
        """The label meaning "no class" (classifier-free guidance, unconditional models)."""
        return self.num_classes


__all__ = [
    "DEFAULT_PRESET",
    "JIT_PRESETS",
    "JIT_SIZES",
    "PREDICTION_TYPES",
    "PUBLISHED_PRESETS",
    "JiTConfig",
    "apply_preset",
    "swiglu_hidden_size",
]
