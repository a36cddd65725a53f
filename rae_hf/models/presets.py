"""The one preset rule of rae_hf's configs: a preset fills only the fields the caller left unset (timm's
`dict(preset, **kwargs)`), so explicit arguments always win, and an unknown preset name is an error that lists the
known ones.

Used by every config with presets: `RAEConfig(decoder_preset=...)`, `ViTVariantConfig(preset=...)`,
`JiTConfig(preset=...)`, `DinoConfig(backbone_preset=...)`, `DiTDHConfig(preset=...)`, and the probe protocols of
`ProbeTrainingArguments`. Model folders load as remote code without this package, so a config file cannot import
this module: it keeps a verbatim copy of `apply_preset` under the marker
``# Copied from rae_hf.models.presets.apply_preset``; `tests/foundation/test_model_copies.py` fails when a copy drifts
from this original, and `tests/foundation/test_presets.py` checks every config follows the rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["apply_preset"]


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
