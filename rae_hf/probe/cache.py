"""On-disk feature cache: one `datasets` folder (`save_to_disk`) per key, the key hashing everything features
depend on, so a changed setting never reuses stale features.

Layout: `<cache_dir>/<key>/dataset/` (Arrow, loadable with `datasets.load_from_disk`) and
`<cache_dir>/<key>/probe_features.json` (what the key was computed from, counts, the dataset check, and the size and
SHA-256 of every file of `dataset/`). An entry is built in a temporary folder and renamed into place, so an
interrupted extraction never leaves a partial entry. Before an entry is reused its files are verified against the
recorded sizes and checksums; an entry that fails (truncated or overwritten files, unreadable metadata, Arrow files
that do not load) is reported with its path, deleted and extracted again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass

import datasets
import numpy as np
import torch

from rae_hf.data.checksums import CorruptCacheError, description_key, file_digests, verify_files
from rae_hf.probe.encoders import ProbeEncoder
from rae_hf.probe.features import ComponentSpec, FeatureSet, collect

__all__ = ["DatasetCheck", "FeatureCache", "feature_cache_key", "feature_description"]

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 2  # 2: checksums of the dataset files in the metadata
METADATA_FILE = "probe_features.json"

ComponentBatches = Iterable[tuple[dict[str, torch.Tensor], torch.Tensor, int]]


@dataclass(frozen=True)
class DatasetCheck:
    """Row count and digest of the full label column of a split, verified again whenever a cache entry is reused."""

    num_rows: int
    labels_digest: str

    @classmethod
    def from_labels(cls, labels: Sequence[int] | np.ndarray) -> DatasetCheck:
        array = np.asarray(labels, dtype=np.int64)
        return cls(int(array.shape[0]), hashlib.sha256(array.tobytes()).hexdigest()[:32])


def feature_description(
    encoder: ProbeEncoder,
    spec: ComponentSpec,
    transform: str,
    split: str,
    dataset_fingerprint: str,
    num_rows: int | None,
    precision: str,
    storage_dtype: torch.dtype,
) -> dict:
    """Everything the features of one split depend on (the cache key is its hash).

    `transform` is the image transform's description (its `repr`, plus the pass seed for random ones);
    `dataset_fingerprint` identifies the split's content (`Dataset._fingerprint`, or the source description of a
    streamed split) and `num_rows` its length when known.
    """
    return {
        "format_version": CACHE_FORMAT_VERSION,
        "encoder": encoder.identity(),
        "components": asdict(spec),
        "transform": transform,
        "split": split,
        "dataset": {"fingerprint": dataset_fingerprint, "num_rows": num_rows},
        "precision": precision,
        "storage_dtype": str(storage_dtype).removeprefix("torch."),
    }


def feature_cache_key(description: dict) -> str:
    """Hash of a `feature_description` (canonical JSON)."""
    return description_key(description)


class FeatureCache:
    """Features kept in memory only (`root=None`) or stored under `root` and reused by later runs.

    `verify=False` skips the checksums of reused entries (their sizes are still checked), for very large caches on
    trusted storage.
    """

    def __init__(self, root: str | None = None, verify: bool = True):
        self.root = root
        self.verify = verify

    def get_or_extract(
        self,
        description: dict,
        extract: Callable[[], ComponentBatches],
        shapes: dict[str, tuple[int, ...]],
        check: DatasetCheck | None = None,
    ) -> tuple[FeatureSet, bool]:
        """The features of `description`, and whether they came from the cache.

        `extract()` yields `(components, labels, num_skipped)` batches (it runs the encoder); `shapes` gives each
        component's per-example shape. A stored entry whose dataset check differs from `check` (another dataset
        under the same fingerprint, edited files, ...) is reported and extracted again.
        """
        if self.root is None:
            return collect(extract()), False
        key = feature_cache_key(description)
        entry = os.path.join(self.root, key)
        if os.path.isdir(entry):
            try:
                metadata = _read_metadata(entry)
                problem = _mismatch(metadata, check)
                if problem is None:
                    verify_files(os.path.join(entry, "dataset"), metadata["files"], checksums=self.verify)
                    features = _load(entry, metadata)
                    logger.info("Reusing cached features %s (%s).", entry, description["split"])
                    return features, True
                logger.warning("Stale feature cache %s: %s. Extracting again.", entry, problem)
            except Exception as err:  # anything unreadable: never trusted, always rebuilt
                logger.warning("Corrupt feature cache %s: %s. Deleting it and extracting again.", entry, err)
            shutil.rmtree(entry)
        self._write(entry, key, description, extract(), shapes, check)
        metadata = _read_metadata(entry)
        return _load(entry, metadata), False

    def _write(
        self,
        entry: str,
        key: str,
        description: dict,
        batches: ComponentBatches,
        shapes: dict[str, tuple[int, ...]],
        check: DatasetCheck | None,
    ) -> None:
        """Stream the batches into an Arrow dataset in a temporary folder, then move it into place."""
        os.makedirs(self.root, exist_ok=True)
        storage = description["storage_dtype"]
        features = datasets.Features({"labels": datasets.Value("int64")})
        for name, shape in shapes.items():
            features[name] = (
                datasets.List(datasets.Value(storage), length=shape[0])
                if len(shape) == 1
                else datasets.Array2D(shape=shape, dtype=storage)
            )
        counts = {"num_features": 0, "num_skipped": 0}

        def rows() -> Iterator[dict]:
            for components, labels, skipped in batches:
                counts["num_skipped"] += skipped
                arrays = {name: value.cpu().numpy() for name, value in components.items()}
                for index, label in enumerate(labels.tolist()):
                    counts["num_features"] += 1
                    yield {"labels": label, **{name: array[index] for name, array in arrays.items()}}

        build = tempfile.mkdtemp(prefix=f".{key}-", dir=self.root)
        try:
            with _quiet_datasets():
                try:
                    dataset = datasets.Dataset.from_generator(
                        rows, features=features, cache_dir=os.path.join(build, "arrow"), fingerprint=key
                    )
                except datasets.exceptions.DatasetGenerationError as err:  # show the extraction's own error
                    raise (err.__cause__ or err) from None
                if counts["num_features"] == 0:
                    raise ValueError("The split has no decodable image: nothing to extract features from.")
                dataset.save_to_disk(os.path.join(build, "dataset"))
            del dataset
            shutil.rmtree(os.path.join(build, "arrow"))
            metadata = {
                "key": key,
                "description": description,
                **counts,
                "dataset_check": asdict(check) if check is not None else None,
                "files": file_digests(os.path.join(build, "dataset")),
            }
            with open(os.path.join(build, METADATA_FILE), "w") as f:
                json.dump(metadata, f, indent=2)
            try:
                os.replace(build, entry)
            except OSError:  # another process stored the same features meanwhile: keep theirs
                if not os.path.isfile(os.path.join(entry, METADATA_FILE)):
                    raise
        finally:
            if os.path.isdir(build):
                shutil.rmtree(build)
        logger.info("Cached %d features of %s in %s.", counts["num_features"], description["split"], entry)


def _read_metadata(entry: str) -> dict:
    """The entry's metadata; `CorruptCacheError` naming the file when it is missing, not JSON or incomplete."""
    path = os.path.join(entry, METADATA_FILE)
    try:
        with open(path) as f:
            metadata = json.load(f)
    except FileNotFoundError:
        raise CorruptCacheError(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptCacheError(f"{path} is not valid JSON ({err})") from None
    required = ("description", "num_features", "num_skipped", "files")
    if not isinstance(metadata, dict) or any(name not in metadata for name in required):
        raise CorruptCacheError(f"{path} lacks some of {list(required)}")
    return metadata


def _mismatch(metadata: dict, check: DatasetCheck | None) -> str | None:
    """Why a stored entry does not fit the current dataset, or None."""
    stored = metadata.get("dataset_check")
    if check is None or stored is None:
        return None
    if stored["num_rows"] != check.num_rows:
        return f"it was extracted from {stored['num_rows']} rows, the dataset now has {check.num_rows}"
    if stored["labels_digest"] != check.labels_digest:
        return "the dataset's labels changed since it was extracted"
    return None


def _load(entry: str, metadata: dict) -> FeatureSet:
    """Read a stored entry back as tensors, checking its size against its metadata."""
    dataset = datasets.load_from_disk(os.path.join(entry, "dataset"))
    if len(dataset) != metadata["num_features"]:
        raise CorruptCacheError(f"it holds {len(dataset)} rows but recorded {metadata['num_features']}")
    labels = torch.from_numpy(dataset.select_columns(["labels"]).with_format("numpy")[:]["labels"])
    storage = np.dtype(metadata["description"]["storage_dtype"])  # numpy formatting would upcast to float32
    components = dataset.remove_columns(["labels"]).with_format("numpy", dtype=storage)[:]
    columns = {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in components.items()}
    return FeatureSet(columns, labels, metadata["num_skipped"])


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """Hide `datasets`' own progress bars while ours runs."""
    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()
