"""Features of a frozen encoder: pooling variants, one-pass extraction and the sources linear heads train from.

Extraction stores *components* (CLS tokens of the last n blocks, the mean of the last block's patch tokens, the
RAE latent), the union of what the requested variants need; every variant is then a cheap concatenation of them, so
a grid over variants costs one encoder pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from rae_hf.data import ImageCollator
from rae_hf.models.probe.pooling import (
    ComponentSpec,
    FeatureVariant,
    check_variants,
    compute_components,
    variant_tensor,
)
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
PRECISIONS = ("auto", "bf16", "fp32")

Batches = Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]


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

    def select(self, index: torch.Tensor) -> FeatureSet:
        """The examples at `index` (e.g. the fit or held-out part of train)."""
        index = index.to(self.labels.device)
        return FeatureSet({name: value[index] for name, value in self.components.items()}, self.labels[index])

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
