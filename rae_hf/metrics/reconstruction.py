"""PSNR and SSIM of reconstructions against their originals (torchmetrics, summed over processes)."""

from __future__ import annotations

from torch import Tensor, nn
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure


class _PeakSignalNoiseRatio(PeakSignalNoiseRatio):
    """torchmetrics' PSNR with an update that adds the pixel count as a Python number.

    torchmetrics' own update makes the count a new device tensor: a blocking host-to-device copy every batch.
    """

    def update(self, preds: Tensor, target: Tensor) -> None:
        self.sum_squared_error += (preds - target).square().sum()
        self.total += target.numel()


class ReconstructionMetrics(nn.Module):
    """Streaming PSNR and SSIM of images in [0, 1] (both clamped to [0, 1], `data_range=1`).

    PSNR is torchmetrics' default: one PSNR of the mean squared error over ALL pixels seen (not a mean of per-image
    PSNRs); identical images give `inf`. SSIM is the mean of per-image SSIMs (11x11 Gaussian window). The states
    are sums, so under several processes each feeds its own shard (no padding) and `compute()` (a collective on
    every process) gives the values over all images.
    """

    def __init__(self):
        super().__init__()
        self.psnr = _PeakSignalNoiseRatio(data_range=1.0)
        self.ssim = StructuralSimilarityIndexMeasure(data_range=1.0)

    def update(self, reconstructions: Tensor, originals: Tensor) -> None:
        """Add a batch of reconstructions and originals, both `[B, C, H, W]` in [0, 1]."""
        if reconstructions.shape != originals.shape or reconstructions.ndim != 4:
            raise ValueError(
                "Expected reconstructions and originals of the same shape [B, C, H, W], got "
                f"{tuple(reconstructions.shape)} and {tuple(originals.shape)}."
            )
        reconstructions = reconstructions.float().clamp(0, 1)
        originals = originals.float().clamp(0, 1)
        self.psnr.update(reconstructions, originals)
        self.ssim.update(reconstructions, originals)

    def compute(self) -> dict[str, Tensor]:
        """`{"psnr": 0-d tensor, "ssim": 0-d tensor}` over every image seen (by all processes)."""
        return {"psnr": self.psnr.compute(), "ssim": self.ssim.compute()}

    def reset(self) -> None:
        self.psnr.reset()
        self.ssim.reset()


__all__ = ["ReconstructionMetrics"]
