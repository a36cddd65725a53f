"""Checkpoint converters, one module per source format, and their command line.

    python -m rae_hf.convert from-diffusers nyu-visionx/RAE-dinov2-wReg-base-ViTXL-n08 runs/rae-dinov2-b
    python -m rae_hf.convert to-diffusers runs/rae-dinov2-b runs/rae-dinov2-b-diffusers
    python -m rae_hf.convert from-official runs/rae-official --decoder model.pt --stats stat.pt \
        --encoder facebook/dinov2-with-registers-base
    python -m rae_hf.convert dit stage2_model.pt runs/ditdh-xl [--weights ema|model]
    python -m rae_hf.convert <kind> ...      # runs rae_hf.convert.<kind>.main(argv), e.g. rae_official, jit

Modules: `rae_diffusers` (RAE <-> diffusers `AutoencoderRAE`), `rae_official` (official RAE repository -> RAE),
`jit` (official JiT -> JiT), `dit` (official RAE stage-2 DiT-DH -> DiTDHModel). A new converter is a module here
with `main(argv)`; the command line finds it by name (modules named `_x` are helpers, not converters). Files are
read by `rae_hf.models.checkpoint_io`, the one checkpoint reader (nothing is executed), shared with pretrained-weight
loading.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Sequence

from ._diffusers_mapping import (
    decoder_key_from_diffusers,
    decoder_key_to_diffusers,
    diffusers_encoder_config,
    diffusers_stats_to_rae,
    rae_stats_to_diffusers,
)
from .rae_diffusers import rae_from_diffusers, rae_to_diffusers, save_diffusers
from .rae_official import load_official_decoder_state, rae_from_official

__all__ = [
    "available_kinds",
    "decoder_key_from_diffusers",
    "decoder_key_to_diffusers",
    "diffusers_encoder_config",
    "diffusers_stats_to_rae",
    "load_official_decoder_state",
    "main",
    "rae_from_diffusers",
    "rae_from_official",
    "rae_stats_to_diffusers",
    "rae_to_diffusers",
    "save_diffusers",
]

# Command names kept from the single-module converter: name -> (module, whether the name stays in argv).
COMMAND_ALIASES = {
    "from-diffusers": ("rae_diffusers", True),
    "to-diffusers": ("rae_diffusers", True),
    "from-official": ("rae_official", False),
}


def available_kinds() -> list[str]:
    """Converter modules of this package (those a `python -m rae_hf.convert <kind>` can run)."""
    return sorted(info.name for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_"))


def main(argv: Sequence[str] | None = None) -> None:
    """Dispatch `<kind> ...` to `rae_hf.convert.<kind>.main(...)` (`-` in the kind read as `_`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = (
        "usage: python -m rae_hf.convert <kind> ...   kinds: "
        + ", ".join(available_kinds() + sorted(COMMAND_ALIASES))
        + "   (python -m rae_hf.convert <kind> --help for its arguments)"
    )
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        if not argv:
            raise SystemExit(2)
        return
    kind, rest = argv[0], argv[1:]
    if kind in COMMAND_ALIASES:
        module_name, keep = COMMAND_ALIASES[kind]
        rest = argv if keep else rest
    else:
        module_name = kind.replace("-", "_")
    if not module_name.isidentifier() or module_name.startswith("_"):
        raise SystemExit(f"Unknown converter {kind!r}.\n{usage}")
    qualified = f"{__name__}.{module_name}"
    try:
        module = importlib.import_module(qualified)
    except ModuleNotFoundError as error:
        if error.name != qualified:
            raise
        raise SystemExit(f"Unknown converter {kind!r}.\n{usage}") from error
    if not callable(getattr(module, "main", None)):
        raise SystemExit(f"{qualified} has no main(argv).\n{usage}")
    module.main(rest)
