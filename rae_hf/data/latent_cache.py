"""On-disk cache of normalized RAE latents for stage-2 (DiT) training: every training image is encoded once, as is
and horizontally flipped, and training reads the latents back instead of running the encoder each step.

Layout of `--latent_cache DIR` (one entry per folder):
- `DIR/dataset/latents-<r>-of-<n>.npy`: `[rows, 2, C, h, w]` (variant 0: the image, 1: its horizontal flip) written
  by process r of n, each process encoding its contiguous block of the split (`process_range`);
- `DIR/dataset/labels-<r>-of-<n>.npy`: `[rows]` int64;
- `DIR/latent_cache.json`: the key and what it hashes (the RAE's encoding weights and statistics, the image
  transform, the dataset's fingerprint, row count and labels), the rows written by each process and the size and
  SHA-256 of every file.

An entry is built in `DIR.partial` and renamed into place, so an interrupted build never looks complete. Before reuse
its key is compared (another key: a stale cache, named in a warning with what changed, and rebuilt) and its files are
verified (shapes, row counts, sizes and checksums; a failure names the file and the cache is rebuilt). Shards are read
through memory maps, so a cache larger than memory works; a cache built by N processes is read by any number.

Training from the cache draws the flip of each item as `v2.RandomHorizontalFlip` does (`torch.rand(1) < 0.5`) under
the trainer's per-sample seeded RNG, so the cached and the on-the-fly paths give the same batches.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from accelerate import PartialState
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from rae_hf.data.checksums import CorruptCacheError, description_key, file_digests, verify_files
from rae_hf.data.collate import ImageCollator
from rae_hf.data.datasets import with_image_transform
from rae_hf.data.sharding import process_range
from rae_hf.data.transforms import image_transform

__all__ = [
    "LATENT_STORAGE_DTYPES",
    "CachedLatentDataset",
    "LatentCache",
    "LatentCollator",
    "cached_split_latents",
    "latent_cache_description",
    "rae_encoding_digest",
]

logger = logging.getLogger(__name__)

LATENT_CACHE_FORMAT = 1
METADATA_FILE = "latent_cache.json"
LATENT_STORAGE_DTYPES = ("float32", "float16")


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    return tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()


def rae_encoding_digest(rae) -> str:
    """SHA-256 of everything `rae.encode` depends on: the encoder's weights, the latent statistics and the settings
    of the input path (the decoder is not part of it: a retrained decoder keeps the cache valid)."""
    digest = hashlib.sha256()
    config = rae.config
    settings = {
        "encoder_input_size": config.encoder_input_size,
        "encoder_image_mean": list(config.encoder_image_mean),
        "encoder_image_std": list(config.encoder_image_std),
        "normalize_latents": config.normalize_latents,
        "latent_norm_eps": config.latent_norm_eps,
        "encoder_model_type": config.encoder_config.model_type,
    }
    digest.update(json.dumps(settings, sort_keys=True).encode())
    tensors = {f"encoder.{k}": v for k, v in rae.encoder.state_dict().items()}
    tensors |= {"latents_mean": rae.latents_mean, "latents_var": rae.latents_var}
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(str(tensors[name].dtype).encode())
        digest.update(_tensor_bytes(tensors[name]))
    return digest.hexdigest()[:32]


def latent_cache_description(
    rae, transform: str, dataset_fingerprint: str, labels: Sequence[int], storage_dtype: str = "float32"
) -> dict:
    """What the cached latents depend on (the cache key is its hash): the RAE (`rae_encoding_digest`), the image
    transform's description, the dataset's fingerprint, its row count and the digest of its labels."""
    if storage_dtype not in LATENT_STORAGE_DTYPES:
        raise ValueError(f"latent_cache_dtype={storage_dtype!r} must be one of {LATENT_STORAGE_DTYPES}.")
    labels = np.asarray(labels, dtype=np.int64)
    return {
        "format_version": LATENT_CACHE_FORMAT,
        "rae": rae_encoding_digest(rae),
        "latent_shape": [rae.config.latent_channels, rae.config.latent_grid_size, rae.config.latent_grid_size],
        "transform": transform,
        "dataset": {
            "fingerprint": dataset_fingerprint,
            "num_rows": int(labels.shape[0]),
            "labels_sha256": hashlib.sha256(labels.tobytes()).hexdigest()[:32],
        },
        "storage_dtype": storage_dtype,
    }


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """The keys of two descriptions whose values differ (`dataset.num_rows`...)."""
    names = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            names += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            names.append(f"{prefix}{key}")
    return names


class CachedLatentDataset(Dataset):
    """`{"latents": [C, h, w] float32, "labels": int}` items read from the memory-mapped shards of a cache entry;
    with `hflip`, item i is the flipped variant when `torch.rand(1) < 0.5` (the RNG the trainer seeds per sample)."""

    def __init__(self, shards: Sequence[tuple[str, str, int]], hflip: bool = True):
        self.shards = [(latents, labels, int(rows)) for latents, labels, rows in shards]
        self.offsets = np.cumsum([0] + [rows for _, _, rows in self.shards]).tolist()
        self.hflip = hflip
        self._arrays: list[tuple[np.ndarray, np.ndarray]] | None = None  # opened lazily (one map per process)

    def __len__(self) -> int:
        return self.offsets[-1]

    def _open(self) -> list[tuple[np.ndarray, np.ndarray]]:
        if self._arrays is None:
            self._arrays = [(np.load(latents, mmap_mode="r"), np.load(labels)) for latents, labels, _ in self.shards]
        return self._arrays

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} cached latents")
        shard = bisect.bisect_right(self.offsets, index) - 1
        latents, labels = self._open()[shard]
        row = index - self.offsets[shard]
        variant = 1 if self.hflip and torch.rand(1).item() < 0.5 else 0
        item: dict[str, Any] = {"latents": torch.from_numpy(np.array(latents[row, variant], dtype=np.float32))}
        if labels[row] >= 0:  # -1: the split has no labels
            item["labels"] = int(labels[row])
        return item

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": None}


class LatentCollator:
    """Stack `{"latents", "labels"?}` items into `{"latents": [B, C, h, w], "labels": [B]}` (no labels: unlabelled)."""

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = {"latents": torch.stack([example["latents"] for example in examples])}
        if all("labels" in example for example in examples):
            batch["labels"] = torch.tensor([example["labels"] for example in examples], dtype=torch.long)
        return batch


class LatentCache:
    """The latent cache at `root` (see the module docstring). `verify=False` checks sizes but skips the checksums of
    a reused cache (very large caches on trusted storage)."""

    def __init__(self, root: str, verify: bool = True):
        self.root = os.path.abspath(root)
        self.verify = verify

    @property
    def metadata_path(self) -> str:
        return os.path.join(self.root, METADATA_FILE)

    def load_or_build(
        self,
        description: dict,
        encode: Callable[[torch.Tensor], torch.Tensor],
        dataset: Dataset,
        collate_fn: Callable,
        batch_size: int,
        hflip: bool = True,
    ) -> tuple[CachedLatentDataset, bool]:
        """The cached latents of `description` and whether they were reused (else built now).

        `dataset` yields `{"pixel_values", "label"?}` without random augmentation; `encode(images) -> latents` is the
        frozen RAE's normalized encoder. Every process must call this: each encodes its share of a rebuild.
        """
        state = PartialState()
        problem = self._check(description) if state.is_main_process else None
        if state.num_processes > 1:
            shared = [problem]
            torch.distributed.broadcast_object_list(shared, src=0)
            problem = shared[0]
        if problem == "":
            logger.info("Reusing the latent cache %s (%d latents).", self.root, self._read_metadata()["num_items"])
            return self._dataset(hflip), True
        if problem is not None:
            logger.warning("%s Rebuilding it.", problem)
        self._build(description, encode, dataset, collate_fn, batch_size, state)
        return self._dataset(hflip), False

    # ----- checks -------------------------------------------------------------------------------------------------
    def _read_metadata(self) -> dict:
        try:
            with open(self.metadata_path) as f:
                metadata = json.load(f)
        except FileNotFoundError:
            raise CorruptCacheError(f"{self.metadata_path} is missing") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CorruptCacheError(f"{self.metadata_path} is not valid JSON ({err})") from None
        required = ("key", "description", "num_items", "shards", "files")
        if not isinstance(metadata, dict) or any(name not in metadata for name in required):
            raise CorruptCacheError(f"{self.metadata_path} lacks some of {list(required)}")
        return metadata

    def _check(self, description: dict) -> str | None:
        """None: no cache yet; "": the cache fits and is intact; else why it cannot be used (for the warning)."""
        if not os.path.exists(self.root):
            return None
        try:
            metadata = self._read_metadata()
        except CorruptCacheError as err:
            return f"Corrupt latent cache {self.root}: {err}."
        if metadata["key"] != description_key(description):
            changed = _differences(metadata["description"], description) or ["its format"]
            return (
                f"Stale latent cache {self.root}: it was built for another {', '.join(changed)} "
                f"(key {metadata['key']}, now {description_key(description)})."
            )
        try:
            verify_files(os.path.join(self.root, "dataset"), metadata["files"], checksums=self.verify)
            self._verify_shapes(metadata)
        except (CorruptCacheError, OSError, ValueError) as err:
            return f"Corrupt latent cache {self.root}: {err}."
        return ""

    def _verify_shapes(self, metadata: dict) -> None:
        shape = tuple(metadata["description"]["latent_shape"])
        dtype = np.dtype(metadata["description"]["storage_dtype"])
        total = 0
        for shard in metadata["shards"]:
            latents = np.load(os.path.join(self.root, "dataset", shard["latents"]), mmap_mode="r")
            labels = np.load(os.path.join(self.root, "dataset", shard["labels"]), mmap_mode="r")
            rows = shard["rows"]
            if latents.shape[1:] != (2, *shape) or latents.dtype != dtype or latents.shape[0] < rows:
                raise CorruptCacheError(
                    f"{shard['latents']} holds {latents.dtype} {latents.shape}, expected {dtype} [>={rows}, 2, {shape}]"
                )
            if labels.shape[0] < rows:
                raise CorruptCacheError(f"{shard['labels']} holds {labels.shape[0]} labels, expected {rows}")
            total += rows
        if total != metadata["num_items"]:
            raise CorruptCacheError(f"its shards hold {total} latents, {metadata['num_items']} were recorded")

    def _dataset(self, hflip: bool) -> CachedLatentDataset:
        metadata = self._read_metadata()
        folder = os.path.join(self.root, "dataset")
        shards = [
            (os.path.join(folder, s["latents"]), os.path.join(folder, s["labels"]), s["rows"])
            for s in metadata["shards"]
        ]
        return CachedLatentDataset(shards, hflip=hflip)

    # ----- building -----------------------------------------------------------------------------------------------
    def _build(self, description, encode, dataset, collate_fn, batch_size: int, state: PartialState) -> None:
        staging = self.root.rstrip(os.sep) + ".partial"
        if state.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
            os.makedirs(os.path.join(staging, "dataset"))
        state.wait_for_everyone()
        rank, world = state.process_index, state.num_processes
        share = process_range(len(dataset), rank, world)
        names = (f"latents-{rank:05d}-of-{world:05d}.npy", f"labels-{rank:05d}-of-{world:05d}.npy")
        rows, skipped = self._encode_share(
            Subset(dataset, share),
            encode,
            collate_fn,
            batch_size,
            description,
            [os.path.join(staging, "dataset", n) for n in names],
        )
        counts = [(rank, rows, skipped)]
        if world > 1:
            gathered = [None] * world
            torch.distributed.all_gather_object(gathered, counts[0])
            counts = gathered
        if state.is_main_process:
            shards = [
                {
                    "latents": f"latents-{r:05d}-of-{world:05d}.npy",
                    "labels": f"labels-{r:05d}-of-{world:05d}.npy",
                    "rows": n,
                }
                for r, n, _ in sorted(counts)
            ]
            metadata = {
                "key": description_key(description),
                "description": description,
                "num_items": sum(n for _, n, _ in counts),
                "num_skipped": sum(s for _, _, s in counts),
                "shards": shards,
                "files": file_digests(os.path.join(staging, "dataset")),
            }
            if metadata["num_items"] == 0:
                raise ValueError("The training split has no decodable image: nothing to cache.")
            with open(os.path.join(staging, METADATA_FILE), "w") as f:
                json.dump(metadata, f, indent=2)
            if os.path.exists(self.root):
                shutil.rmtree(self.root)
            os.replace(staging, self.root)
            logger.info("Cached %d latents (with their flips) in %s.", metadata["num_items"], self.root)
        state.wait_for_everyone()

    @torch.no_grad()
    def _encode_share(self, share, encode, collate_fn, batch_size, description, paths) -> tuple[int, int]:
        """Encode this process's share (each image and its flip) into a memory-mapped `.npy`; returns (rows written,
        undecodable images skipped)."""
        shape = tuple(description["latent_shape"])
        latents = np.lib.format.open_memmap(
            paths[0], mode="w+", dtype=np.dtype(description["storage_dtype"]), shape=(len(share), 2, *shape)
        )
        labels = np.full(len(share), -1, dtype=np.int64)
        rows = skipped = 0
        loader = DataLoader(share, batch_size=batch_size, collate_fn=collate_fn)
        for batch in tqdm(loader, desc="caching latents", disable=not PartialState().is_local_main_process):
            images = batch["pixel_values"]
            skipped += int(batch.get("num_skipped", 0))
            count = images.shape[0]
            if count == 0:
                continue
            both = encode(torch.cat([images, images.flip(-1)])).float().cpu()
            latents[rows : rows + count] = torch.stack(both.split(count), dim=1).numpy()
            if "labels" in batch:
                labels[rows : rows + count] = batch["labels"].numpy()
            rows += count
        latents.flush()
        del latents
        np.save(paths[1], labels)
        return rows, skipped


def cached_split_latents(
    split,
    rae,
    root: str,
    image_size: int,
    image_column: str = "image",
    batch_size: int = 64,
    storage_dtype: str = "float32",
    verify: bool = True,
    hflip: bool = True,
    device: torch.device | str = "cpu",
) -> CachedLatentDataset:
    """The latents of a `datasets` split (ADM center crop to `image_size`, `label` column if any) from the cache at
    `root`, built there by the frozen `rae` (on `device`) when missing, stale or corrupt."""
    if not hasattr(split, "__len__"):
        raise ValueError("A latent cache needs a map-style dataset (not a streamed one).")
    transform = image_transform("adm_center_crop", image_size)
    labelled = "label" in split.column_names
    labels = split["label"] if labelled else [-1] * len(split)
    fingerprint = getattr(split, "_fingerprint", None) or repr(split)
    description = latent_cache_description(rae, repr(transform), fingerprint, labels, storage_dtype)
    images = with_image_transform(split, transform, image_column, ["label"] if labelled else [])

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return rae.encode(pixels.to(device).float()).latents

    dataset, _ = LatentCache(root, verify=verify).load_or_build(
        description, encode, images, ImageCollator(), batch_size, hflip
    )
    return dataset
