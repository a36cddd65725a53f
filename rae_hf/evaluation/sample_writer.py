"""Writes evaluated images as PNGs and as an ADM sample batch `.npz` (the layout ADM's evaluator and
torch-fidelity read), one file set per process, with memory bounded by one batch."""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from types import TracebackType

import numpy as np
import torch
from PIL import Image
from torch import Tensor

__all__ = ["SampleWriter"]


def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> dict:
    return {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}


class SampleWriter:
    """Saves one process's images `[B, 3, H, W]` in [0, 1] as `<prefix>_<i>.png` and, at `finish()`, as
    `<name>_<prefix>.npz` holding `arr_0` uint8 `[N, H, W, 3]` (and `arr_1` int64 `[N]` labels when every batch had
    labels: ADM's class-conditional sample layout). `prefix` is `rank<process_index>`, `i` counts this process's images
    from 0; with contiguous shards, concatenating the ranks in order restores the global order.

    Pixels are quantized as `round(x * 255)` (what the FID Inception sees), streamed to a temporary file and copied
    into the `.npz` at the end. Use as a context manager (the temporary file is removed on exit).
    """

    def __init__(self, save_dir: str | os.PathLike, process_index: int = 0, name: str = "samples", png: bool = True):
        self.save_dir = Path(save_dir)
        self.save_dir.mkdir(parents=True, exist_ok=True)
        self.prefix = f"rank{process_index}"
        self.name = name
        self.png = png
        self.count = 0
        self.size: tuple[int, int] | None = None
        self._labels: list[np.ndarray] | None = []
        self._pixels = tempfile.TemporaryFile(dir=self.save_dir)

    def __enter__(self) -> SampleWriter:
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, traceback: TracebackType | None) -> None:
        self._pixels.close()

    @property
    def npz_path(self) -> Path:
        return self.save_dir / f"{self.name}_{self.prefix}.npz"

    def write(self, images: Tensor, labels: Tensor | None = None) -> None:
        """Add images `[B, 3, H, W]` in [0, 1] (and their class labels `[B]`, if any)."""
        pixels = images.float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        size = (pixels.shape[1], pixels.shape[2])
        if self.size is not None and size != self.size:
            raise ValueError(f"Image size changed from {self.size} to {size}; one .npz needs a fixed size.")
        self.size = size
        if labels is None or self._labels is None:
            self._labels = None
        else:
            self._labels.append(labels.detach().to("cpu", torch.int64).numpy().reshape(-1))
        if self.png:
            for offset, image in enumerate(pixels):
                Image.fromarray(image).save(self.save_dir / f"{self.prefix}_{self.count + offset:06d}.png")
        self.count += pixels.shape[0]
        self._pixels.write(np.ascontiguousarray(pixels).tobytes())

    def finish(self) -> Path | None:
        """Write the `.npz` and return its path (None when this process saw no image)."""
        if self.size is None:
            return None
        self._pixels.seek(0)
        with zipfile.ZipFile(self.npz_path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            with archive.open("arr_0.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array_header_1_0(member, _npy_header(np.uint8, (self.count, *self.size, 3)))
                shutil.copyfileobj(self._pixels, member, 1 << 24)
            if self._labels:
                labels = np.concatenate(self._labels)
                with archive.open("arr_1.npy", "w") as member:
                    np.lib.format.write_array(member, labels)
        return self.npz_path
