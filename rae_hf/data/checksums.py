"""Integrity of on-disk caches: a key hashing what an entry was computed from, and the size and SHA-256 of every file
of an entry, recorded when it is written and verified before it is reused."""

from __future__ import annotations

import hashlib
import json
import os

__all__ = ["CorruptCacheError", "description_key", "file_digests", "sha256_file", "verify_files"]

HASH_BLOCK = 1 << 22


class CorruptCacheError(ValueError):
    """A stored entry cannot be trusted (the message names the file and the problem)."""


def description_key(description: dict) -> str:
    """Hash of a description (canonical JSON): the key of a cache entry."""
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()[:32]


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def file_digests(folder: str) -> dict[str, dict]:
    """`{relative path: {"size", "sha256"}}` of every file under `folder`."""
    digests = {}
    for directory, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(directory, name)
            digests[os.path.relpath(path, folder)] = {"size": os.path.getsize(path), "sha256": sha256_file(path)}
    return digests


def verify_files(folder: str, recorded: dict[str, dict], checksums: bool = True) -> None:
    """`CorruptCacheError` naming the first file of `folder` that is missing, extra, resized or (with `checksums`)
    changed since `recorded = file_digests(folder)` was taken."""
    present = set()
    for directory, _, names in os.walk(folder):
        present |= {os.path.relpath(os.path.join(directory, name), folder) for name in names}
    for name in sorted(set(recorded) | present):
        path = os.path.join(folder, name)
        if name not in present:
            raise CorruptCacheError(f"{path} is missing")
        if name not in recorded:
            raise CorruptCacheError(f"{path} was not written with the cache")
        size = os.path.getsize(path)
        if size != recorded[name]["size"]:
            raise CorruptCacheError(f"{path} has {size} bytes, {recorded[name]['size']} were written")
        if checksums and sha256_file(path) != recorded[name]["sha256"]:
            raise CorruptCacheError(f"{path} changed since it was written (SHA-256 mismatch)")
