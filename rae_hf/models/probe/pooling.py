"""Feature variants of a probed backbone: which tokens become the feature vector a linear head reads.

A variant (`cls`, `mean`, `cls_mean`, `last4`, `last4_avgpool`, `latent`, `latent_mean`) is a concatenation of
*components* (CLS tokens of the last n blocks, the mean of the last block's patch tokens, the RAE latent); a set of
variants needs one encoder pass (`compute_components`), then each is a cheap `variant_tensor`. Used by the probe
classifier (`ProbeClassifier.forward`) and by feature extraction in `rae_hf.probe`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..backbone import FrozenBackbone

__all__ = [
    "LATENT_KINDS",
    "ComponentSpec",
    "FeatureVariant",
    "check_variants",
    "compute_components",
    "variant_tensor",
]

LATENT_KINDS = ("flat", "mean")
_LAST_N = re.compile(r"^last(\d+)(_avgpool)?$")


@dataclass(frozen=True)
class FeatureVariant:
    """One feature vector per image, named as in results (`cls`, `mean`, `cls_mean`, `last4`, `last4_avgpool`,
    `latent`, `latent_mean`).

    Attributes:
        cls_blocks: the CLS tokens of the last `cls_blocks` blocks, concatenated earliest first (DINOv2); 0 for none.
        patch_mean: append the mean of the last block's patch tokens (DINOv2's "avgpool").
        latent: `"flat"` (the patch-token map, RAE-standardized when it has statistics, flattened) or `"mean"` (the
            same map averaged over positions); exclusive with the two fields above.
    """

    cls_blocks: int = 0
    patch_mean: bool = False
    latent: str | None = None

    def __post_init__(self) -> None:
        if self.latent is not None and (self.latent not in LATENT_KINDS or self.cls_blocks or self.patch_mean):
            raise ValueError(f"latent must be one of {LATENT_KINDS} and used alone, got {self}.")
        if self.latent is None and (self.cls_blocks < 0 or (self.cls_blocks == 0 and not self.patch_mean)):
            raise ValueError(f"A feature variant needs CLS blocks, the patch mean or a latent, got {self}.")

    @property
    def name(self) -> str:
        if self.latent is not None:
            return "latent" if self.latent == "flat" else "latent_mean"
        if self.cls_blocks == 0:
            return "mean"
        if self.cls_blocks == 1:
            return "cls_mean" if self.patch_mean else "cls"
        return f"last{self.cls_blocks}" + ("_avgpool" if self.patch_mean else "")

    @classmethod
    def from_name(cls, name: str) -> FeatureVariant:
        """Inverse of `name`."""
        fixed = {
            "cls": cls(cls_blocks=1),
            "mean": cls(patch_mean=True),
            "cls_mean": cls(cls_blocks=1, patch_mean=True),
            "latent": cls(latent="flat"),
            "latent_mean": cls(latent="mean"),
        }
        if name in fixed:
            return fixed[name]
        match = _LAST_N.match(name)
        if match is None or int(match.group(1)) < 1:
            raise ValueError(f"Unknown feature variant {name!r}; use one of {sorted(fixed)} or last<n>[_avgpool].")
        return cls(cls_blocks=int(match.group(1)), patch_mean=match.group(2) is not None)

    def dim(self, encoder: FrozenBackbone) -> int:
        """Length of the feature vector for `encoder`."""
        if self.latent == "flat":
            return encoder.hidden_size * encoder.grid_size**2
        return encoder.hidden_size * (self.cls_blocks + int(self.patch_mean) + int(self.latent == "mean"))


def check_variants(encoder: FrozenBackbone, variants: Sequence[FeatureVariant]) -> None:
    """Reject variants the encoder cannot produce, with the reason."""
    for variant in variants:
        if variant.cls_blocks > encoder.num_blocks:
            raise ValueError(f"{variant.name} needs {variant.cls_blocks} blocks; the encoder has {encoder.num_blocks}.")
        if variant.cls_blocks and not encoder.has_cls_feature:
            raise ValueError(
                f"{encoder.model_type} has no CLS token (nor pooling head): {variant.name} is unavailable."
            )
        if variant.cls_blocks > 1 and not encoder.layout.has_cls_token:
            raise ValueError(f"{variant.name} needs a CLS token in every block; {encoder.model_type} has none.")


@dataclass(frozen=True)
class ComponentSpec:
    """What extraction stores for a set of variants: `cls` `[N, cls_blocks, C]`, `patch_mean` `[N, C]`,
    `latent` `[N, C, h*w]` and `latent_mean` `[N, C]` (only when `latent` is not stored anyway)."""

    cls_blocks: int = 0
    patch_mean: bool = False
    latent: bool = False
    latent_mean: bool = False

    @classmethod
    def for_variants(cls, variants: Sequence[FeatureVariant]) -> ComponentSpec:
        latent = any(v.latent == "flat" for v in variants)
        return cls(
            cls_blocks=max(v.cls_blocks for v in variants),
            patch_mean=any(v.patch_mean for v in variants),
            latent=latent,
            latent_mean=not latent and any(v.latent == "mean" for v in variants),
        )

    def shapes(self, encoder: FrozenBackbone) -> dict[str, tuple[int, ...]]:
        """Per-example shape of every stored component."""
        width, positions = encoder.hidden_size, encoder.grid_size**2
        shapes = {
            "cls": (self.cls_blocks, width) if self.cls_blocks else None,
            "patch_mean": (width,) if self.patch_mean else None,
            "latent": (width, positions) if self.latent else None,
            "latent_mean": (width,) if self.latent_mean else None,
        }
        return {name: shape for name, shape in shapes.items() if shape is not None}


def compute_components(
    encoder: FrozenBackbone, pixel_values: torch.Tensor, spec: ComponentSpec
) -> dict[str, torch.Tensor]:
    """Run the encoder once on [0, 1] images and return the components of `spec` (float32, on their device)."""
    output = encoder(pixel_values, num_blocks=max(spec.cls_blocks, 1))
    last = output.blocks[-1]
    components: dict[str, torch.Tensor] = {}
    if spec.cls_blocks:
        blocks = output.blocks[-spec.cls_blocks :]
        components["cls"] = torch.stack([encoder.cls_token(b, output.pooled_output) for b in blocks], dim=1)
    patches = encoder.patch_tokens(last)
    if spec.patch_mean:
        components["patch_mean"] = patches.mean(dim=1)
    if spec.latent or spec.latent_mean:
        latents = encoder.latents(patches).flatten(2)  # [B, C, h*w]
        components["latent" if spec.latent else "latent_mean"] = latents if spec.latent else latents.mean(-1)
    return {name: value.float() for name, value in components.items()}


def variant_tensor(components: dict[str, torch.Tensor], variant: FeatureVariant) -> torch.Tensor:
    """`[B, D]` float32 features of `variant` from stored components."""
    if variant.latent == "flat":
        return components["latent"].float().flatten(1)
    if variant.latent == "mean":
        if "latent_mean" in components:
            return components["latent_mean"].float()
        return components["latent"].float().mean(-1)
    parts = []
    if variant.cls_blocks:
        parts.append(components["cls"][:, -variant.cls_blocks :].flatten(1))
    if variant.patch_mean:
        parts.append(components["patch_mean"])
    return torch.cat(parts, dim=1).float()
