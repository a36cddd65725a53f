"""`python -m rae_hf.prune shrink SRC DST`: save a structurally pruned ViT variant as a smaller dense model.

SRC is a folder written by `save_pretrained` (a masked model: pruned entries are zeros); DST receives the shrunk
`ViTVariantForImageClassification` (per-block head counts and MLP widths in its config), loadable with
`AutoModelForImageClassification.from_pretrained(DST)` (after `import rae_hf`, or with `trust_remote_code=True`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from transformers import AutoModelForImageClassification

from ..models.vit import ViTVariantForImageClassification, image_processor
from .shrink import count_parameters, shrink_model, vit_flops


def shrink_checkpoint(source: str, destination: str) -> dict[str, float]:
    """Shrink the model saved in `source` into `destination` (with its image processor); returns params and GFLOPs
    before and after."""
    model = AutoModelForImageClassification.from_pretrained(source).eval()
    if not isinstance(model, ViTVariantForImageClassification):
        raise ValueError(
            f"{source} holds a {type(model).__name__}; shrinking needs a ViTVariantForImageClassification."
        )
    small = shrink_model(model)
    small.save_pretrained(destination)
    image_processor(small.config).save_pretrained(destination)
    return {
        "params_before": count_parameters(model),
        "params_after": count_parameters(small),
        "gflops_before": vit_flops(model.config) / 1e9,
        "gflops_after": vit_flops(small.config) / 1e9,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rae_hf.prune", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    shrink = commands.add_parser("shrink", help="Save a structurally pruned model as a smaller dense model.")
    shrink.add_argument("source", help="Folder of the masked model (save_pretrained).")
    shrink.add_argument("destination", help="Folder for the shrunk model.")
    args = parser.parse_args(argv)
    result = shrink_checkpoint(args.source, args.destination)
    print(
        f"{args.source} -> {args.destination}: params {result['params_before']:,} -> {result['params_after']:,}, "
        f"GFLOPs {result['gflops_before']:.4g} -> {result['gflops_after']:.4g}"
    )


if __name__ == "__main__":
    main()
