"""Features of a frozen encoder: pooling variants, one-pass extraction and the sources linear heads train from.

Extraction stores *components* (CLS tokens of the last n blocks, the mean of the last block's patch tokens, the
RAE latent), the union of what the requested variants need; every variant is then a cheap concatenation of them, so
a grid over variants costs one encoder pass.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from rae_hf.data import ImageCollator
from rae_hf.probe.encoders import ProbeEncoder

__all__ = [
    "POOLINGS",
    "CachedFeatureSource",
    "ComponentSpec",
    "EncoderFeatureSource",
    "FeatureSet",
    "FeatureVariant",
    "autocast_dtype",
    "check_variants",
    "collect",
    "compute_components",
    "extract_features",
    "feature_loader",
    "feature_variants",
    "iter_components",
    "variant_tensor",
]

POOLINGS = ("cls", "mean", "cls_mean", "last_n", "latent", "latent_mean")
LATENT_KINDS = ("flat", "mean")
PRECISIONS = ("auto", "bf16", "fp32")
_LAST_N = re.compile(r"^last(\d+)(_avgpool)?$")

Batches = Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]


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

    def dim(self, encoder: ProbeEncoder) -> int:
        """Length of the feature vector for `encoder`."""
        if self.latent == "flat":
            return encoder.hidden_size * encoder.grid_size**2
        return encoder.hidden_size * (self.cls_blocks + int(self.patch_mean) + int(self.latent == "mean"))


def feature_variants(
    pooling: Sequence[str], n_last_blocks: Sequence[int] = (4,), last_n_avgpool: str = "no"
) -> list[FeatureVariant]:
    """Variants of `--pooling`; `last_n` expands over `n_last_blocks` x `last_n_avgpool` (`no`, `yes` or `both`).

    DINOv2's grid is `pooling=["last_n"], n_last_blocks=[1, 4], last_n_avgpool="both"` (4 variants). Duplicates
    (e.g. `cls` and `last_n` with n=1) are kept once.
    """
    avgpool = {"no": (False,), "yes": (True,), "both": (False, True)}
    if last_n_avgpool not in avgpool:
        raise ValueError(f"last_n_avgpool must be one of {sorted(avgpool)}, got {last_n_avgpool!r}.")
    variants: list[FeatureVariant] = []
    for name in pooling:
        if name not in POOLINGS:
            raise ValueError(f"Unknown pooling {name!r}; choose from {POOLINGS}.")
        if name == "last_n":
            if not n_last_blocks or min(n_last_blocks) < 1:
                raise ValueError(f"n_last_blocks must be positive integers, got {list(n_last_blocks)}.")
            new = [FeatureVariant(n, pool) for n in n_last_blocks for pool in avgpool[last_n_avgpool]]
        else:
            new = [FeatureVariant.from_name(name)]
        variants += [variant for variant in new if variant not in variants]
    if not variants:
        raise ValueError("Give at least one pooling.")
    return variants


def check_variants(encoder: ProbeEncoder, variants: Sequence[FeatureVariant]) -> None:
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

    def shapes(self, encoder: ProbeEncoder) -> dict[str, tuple[int, ...]]:
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
    encoder: ProbeEncoder, pixel_values: torch.Tensor, spec: ComponentSpec
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


@dataclass
class FeatureSet:
    """Extracted features of one split: components `[N, ...]` (storage dtype) and int64 labels `[N]`."""

    components: dict[str, torch.Tensor]
    labels: torch.Tensor
    num_skipped: int = 0

    def __len__(self) -> int:
        return self.labels.shape[0]

    def to(self, device: torch.device | str) -> FeatureSet:
        components = {name: value.to(device) for name, value in self.components.items()}
        return FeatureSet(components, self.labels.to(device), self.num_skipped)

    def variant(self, variant: FeatureVariant) -> torch.Tensor:
        """All `[N, D]` float32 features of one variant."""
        return variant_tensor(self.components, variant)

    @classmethod
    def concatenate(cls, parts: Sequence[FeatureSet]) -> FeatureSet:
        """One set from several (e.g. augmented passes over the same split)."""
        names = parts[0].components
        return cls(
            {name: torch.cat([p.components[name] for p in parts]) for name in names},
            torch.cat([p.labels for p in parts]),
            sum(p.num_skipped for p in parts),
        )


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """bf16 under `auto` on CUDA devices that support it (and always under `bf16`); None means float32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    if precision == "bf16" or (precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return None


def feature_loader(
    dataset, batch_size: int, num_workers: int = 0, sampler: Sequence[int] | None = None, max_bad_image_fraction=0.05
) -> DataLoader:
    """Unshuffled (or `sampler`-ordered) batches of `{"pixel_values", "labels"}` from a `with_image_transform` split
    that kept a `label` column; undecodable images are dropped by `ImageCollator`."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=ImageCollator(max_bad_image_fraction=max_bad_image_fraction),
        pin_memory=torch.cuda.is_available(),
    )


@torch.no_grad()
def iter_components(
    encoder: ProbeEncoder,
    loader: Iterable[dict],
    spec: ComponentSpec,
    device: torch.device,
    precision: str = "auto",
    storage_dtype: torch.dtype = torch.float16,
    desc: str | None = None,
) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor, int]]:
    """Yield `(components, labels, num_skipped)` per batch; components are rounded to `storage_dtype` (on `device`)."""
    dtype = autocast_dtype(device, precision)
    encoder.to(device).eval()
    try:
        total = len(loader)
    except TypeError:  # streamed dataset
        total = None
    for batch in tqdm(loader, desc=desc, total=total, disable=desc is None, unit="batch"):
        pixel_values = batch["pixel_values"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            components = compute_components(encoder, pixel_values, spec)
        stored = {}
        for name, value in components.items():
            value = value.to(storage_dtype)
            if not torch.isfinite(value).all():
                hint = (
                    " (beyond float16's range: use --feature_dtype float32)" if storage_dtype == torch.float16 else ""
                )
                raise FloatingPointError(f"Non-finite {name} features{hint}.")
            stored[name] = value
        labels = batch["labels"].to(device=device, dtype=torch.long)
        if (labels < 0).any():
            raise ValueError("Found negative labels (unlabeled examples, e.g. a test split); probe a labeled split.")
        yield stored, labels, int(batch["num_skipped"])


def extract_features(
    encoder: ProbeEncoder,
    dataset,
    spec: ComponentSpec,
    *,
    batch_size: int,
    device: torch.device,
    num_workers: int = 0,
    precision: str = "auto",
    storage_dtype: torch.dtype = torch.float16,
    desc: str | None = "Extracting features",
) -> FeatureSet:
    """Features of every example of `dataset` (one encoder pass), kept in memory on `device`."""
    loader = feature_loader(dataset, batch_size, num_workers)
    return collect(iter_components(encoder, loader, spec, device, precision, storage_dtype, desc))


def collect(batches: Iterable[tuple[dict[str, torch.Tensor], torch.Tensor, int]]) -> FeatureSet:
    """Concatenate `(components, labels, num_skipped)` batches into a `FeatureSet`."""
    parts: dict[str, list[torch.Tensor]] = {}
    labels, skipped = [], 0
    for components, batch_labels, batch_skipped in batches:
        for name, value in components.items():
            parts.setdefault(name, []).append(value)
        labels.append(batch_labels)
        skipped += batch_skipped
    if not labels:
        raise ValueError("The split has no decodable image: nothing to extract features from.")
    return FeatureSet({name: torch.cat(values) for name, values in parts.items()}, torch.cat(labels), skipped)


class CachedFeatureSource:
    """Training batches gathered from features in memory: after extraction, an epoch costs only the heads."""

    def __init__(self, features: FeatureSet, variants: Sequence[FeatureVariant], device: torch.device):
        self.features = features.to(device)
        self.variants = list(variants)

    def __len__(self) -> int:
        return len(self.features)

    def batches(self, order: torch.Tensor, batch_size: int) -> Batches:
        """`({variant name: [B, D]}, labels)` for consecutive chunks of `order` (indices into the features)."""
        order = order.to(self.features.labels.device)
        for start in range(0, order.shape[0], batch_size):
            index = order[start : start + batch_size]
            components = {name: value[index] for name, value in self.features.components.items()}
            yield _by_variant(components, self.variants), self.features.labels[index]


class EncoderFeatureSource:
    """The path without a cache: every batch of every epoch runs the encoder on its images again.

    `dataset` must be map-style with a deterministic transform (the one the cache would be extracted with), so both
    sources give the same features, rounded to the same `storage_dtype`.
    """

    def __init__(
        self,
        encoder: ProbeEncoder,
        dataset,
        variants: Sequence[FeatureVariant],
        device: torch.device,
        precision: str = "auto",
        storage_dtype: torch.dtype = torch.float16,
        num_workers: int = 0,
    ):
        self.encoder, self.dataset, self.variants, self.device = encoder, dataset, list(variants), device
        self.spec = ComponentSpec.for_variants(self.variants)
        self.precision, self.storage_dtype, self.num_workers = precision, storage_dtype, num_workers

    def __len__(self) -> int:
        return len(self.dataset)

    def batches(self, order: torch.Tensor, batch_size: int) -> Batches:
        loader = feature_loader(self.dataset, batch_size, self.num_workers, sampler=order.tolist())
        stream = iter_components(self.encoder, loader, self.spec, self.device, self.precision, self.storage_dtype)
        for components, labels, _ in stream:
            yield _by_variant(components, self.variants), labels


def _by_variant(components: dict[str, torch.Tensor], variants: Sequence[FeatureVariant]) -> dict[str, torch.Tensor]:
    return {variant.name: variant_tensor(components, variant) for variant in variants}
