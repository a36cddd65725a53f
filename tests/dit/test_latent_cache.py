"""LatentCache: built once and reused, items equal the RAE's encoding of each image and its flip, a missing / stale /
corrupt cache is named and rebuilt, the key follows the RAE weights, the transform and the data."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import torch
from conftest import tiny_rae
from torch.utils.data import Dataset

from rae_hf.data import ImageCollator
from rae_hf.data.latent_cache import (
    CachedLatentDataset,
    LatentCache,
    LatentCollator,
    latent_cache_description,
    rae_encoding_digest,
)


class Images(Dataset):
    def __init__(self, count: int = 6, seed: int = 0):
        self.images = torch.rand(count, 3, 32, 32, generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> dict:
        return {"pixel_values": self.images[index], "label": index % 2}


@pytest.fixture
def rae():
    model = tiny_rae().eval()
    model.set_latent_stats(torch.zeros(32, 4, 4), torch.full((32, 4, 4), 2.0))
    return model


class Encoder:
    """The RAE's encode, counting the images it sees."""

    def __init__(self, rae):
        self.rae, self.count = rae, 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.count += images.shape[0]
        with torch.no_grad():
            return self.rae.encode(images).latents


def build(root, rae, images=None):
    images = images if images is not None else Images()
    description = latent_cache_description(rae, "adm_center_crop(32)", "toy", [i % 2 for i in range(len(images))])
    encoder = Encoder(rae)
    dataset, reused = LatentCache(str(root)).load_or_build(description, encoder, images, ImageCollator(), 4)
    return dataset, reused, encoder


def test_build_then_reuse_with_the_flip_variants(tmp_path, rae):
    images = Images()
    dataset, reused, encoder = build(tmp_path / "cache", rae, images)
    assert not reused and encoder.count == 2 * len(images) and len(dataset) == len(images)
    with torch.no_grad():
        plain = rae.encode(images.images).latents
        flipped = rae.encode(images.images.flip(-1)).latents
    seen = set()
    for index in range(len(dataset)):
        for seed in range(8):  # the flip is drawn from torch's RNG, as v2.RandomHorizontalFlip
            torch.manual_seed(seed)
            item = dataset[index]
            torch.manual_seed(seed)
            flip = torch.rand(1).item() < 0.5
            expected = flipped[index] if flip else plain[index]
            torch.testing.assert_close(item["latents"], expected, rtol=1e-5, atol=1e-5)
            assert item["labels"] == index % 2
            seen.add(flip)
    assert seen == {True, False}
    again, reused, encoder = build(tmp_path / "cache", rae, images)
    assert reused and encoder.count == 0
    batch = LatentCollator()([again[0], again[1]])
    assert batch["latents"].shape == (2, 32, 4, 4) and batch["labels"].tolist() == [0, 1]


def test_stale_cache_is_named_and_rebuilt(tmp_path, rae, caplog):
    build(tmp_path / "cache", rae)
    other = tiny_rae(seed=1).eval()  # other encoder weights: another key
    other.set_latent_stats(torch.zeros(32, 4, 4), torch.full((32, 4, 4), 2.0))
    assert rae_encoding_digest(other) != rae_encoding_digest(rae)
    with caplog.at_level(logging.WARNING):
        _, reused, encoder = build(tmp_path / "cache", other)
    assert not reused and encoder.count == 12
    assert "Stale latent cache" in caplog.text and "rae" in caplog.text and str(tmp_path / "cache") in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # another dataset (fewer rows) under the same folder
        _, reused, _ = build(tmp_path / "cache", other, Images(count=4))
    assert not reused and "dataset.num_rows" in caplog.text


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "metadata", "extra_file"])
def test_corrupt_cache_is_named_and_rebuilt(tmp_path, rae, caplog, damage):
    root = tmp_path / "cache"
    build(root, rae)
    shard = root / "dataset" / "latents-00000-of-00001.npy"
    if damage == "flip_byte":
        data = bytearray(shard.read_bytes())
        data[-5] ^= 0xFF
        shard.write_bytes(bytes(data))
    elif damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:-64])
    elif damage == "metadata":
        (root / "latent_cache.json").write_text("{not json")
    else:
        (root / "dataset" / "stray.npy").write_bytes(b"x")
    with caplog.at_level(logging.WARNING):
        dataset, reused, encoder = build(root, rae)
    assert not reused and encoder.count == 12
    assert "Corrupt latent cache" in caplog.text
    named = "latent_cache.json" if damage == "metadata" else ("stray.npy" if damage == "extra_file" else shard.name)
    assert named in caplog.text
    assert len(dataset) == 6 and not (tmp_path / "cache.partial").exists()


def test_missing_cache_is_built_and_recorded(tmp_path, rae, caplog):
    root = tmp_path / "new" / "cache"
    with caplog.at_level(logging.WARNING):
        _, reused, _ = build(root, rae)
    assert not reused and caplog.text == ""
    metadata = json.loads((root / "latent_cache.json").read_text())
    assert metadata["num_items"] == 6 and metadata["shards"][0]["rows"] == 6
    assert metadata["description"]["latent_shape"] == [32, 4, 4]
    assert set(metadata["files"]) == {"latents-00000-of-00001.npy", "labels-00000-of-00001.npy"}
    latents = np.load(root / "dataset" / "latents-00000-of-00001.npy", mmap_mode="r")
    assert latents.shape == (6, 2, 32, 4, 4) and latents.dtype == np.float32


def test_shards_of_several_processes_read_as_one(tmp_path, rae):
    """A cache written by 2 processes (contiguous blocks) reads as the whole split, in order."""
    images = Images()
    with torch.no_grad():
        plain = rae.encode(images.images).latents
        flipped = rae.encode(images.images.flip(-1)).latents
    shards = []
    for rank, block in enumerate((range(0, 3), range(3, 6))):
        latents = torch.stack([plain[list(block)], flipped[list(block)]], dim=1).numpy()
        paths = [os.path.join(tmp_path, f"{kind}-{rank}.npy") for kind in ("latents", "labels")]
        np.save(paths[0], latents)
        np.save(paths[1], np.array([i % 2 for i in block]))
        shards.append((*paths, len(block)))
    dataset = CachedLatentDataset(shards, hflip=False)
    assert len(dataset) == 6
    for index in range(6):
        torch.testing.assert_close(dataset[index]["latents"], plain[index])
    with pytest.raises(IndexError):
        dataset[6]


def test_description_follows_statistics_transform_and_dtype(rae):
    base = latent_cache_description(rae, "t", "fp", [0, 1])
    assert latent_cache_description(rae, "t2", "fp", [0, 1]) != base
    assert latent_cache_description(rae, "t", "fp", [1, 0])["dataset"] != base["dataset"]
    rae.set_latent_stats(torch.zeros(32, 4, 4), torch.full((32, 4, 4), 3.0))
    assert latent_cache_description(rae, "t", "fp", [0, 1])["rae"] != base["rae"]
    with pytest.raises(ValueError, match="latent_cache_dtype"):
        latent_cache_description(rae, "t", "fp", [0], storage_dtype="int8")
