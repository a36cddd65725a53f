"""Fréchet distance (FID / rFID / FD-DINOv2) with streaming, multi-process statistics.

The real and fake sides are kept as torchmetrics states (feature sum `[D]`, feature outer-product sum `[D, D]` and
a count, all float64, `dist_reduce_fx="sum"`), so 50k images are never held in memory and processes merge exactly.

Multi-process use: every process feeds ITS OWN shard of the images and every process calls `compute()` (a
collective). The states are summed over processes, so each image must be seen by exactly one process: shard WITHOUT
padding (`rae_hf.data.shard_for_process`), and do not pass the evaluation DataLoader through `accelerator.prepare`,
which pads the last batch with repeated images (`even_batches`). Uneven shards (6 and 5 images) are fine. Reference
statistics files are read and written by `rae_hf.evaluation.reference`.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
from typing import Any

import numpy as np
import safetensors.torch
import torch
import torchvision
from torch import Tensor, nn
from torch.hub import load_state_dict_from_url
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3, FeatureExtractorInceptionV3
from torchmetrics.image.fid import FrechetInceptionDistance

INCEPTION_FEATURE_DIM = 2048
INCEPTION_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = URL_INCEPTION_V3
# Below this many images an FID is mostly noise: the covariance has rank N - 1 of 2048 and its bias dwarfs the
# differences between models. Above it the value is biased but comparable between runs of the same N (the papers'
# 50k; 5k-10k is common during training).
MIN_RELIABLE_FID_SAMPLES = 50

ArrayLike = np.ndarray | Tensor
logger = logging.getLogger(__name__)


def save_random_inception_weights(path: str | os.PathLike, seed: int = 0) -> str:
    """Write a RANDOM-weight state dict in the FID Inception-v3 layout to `path` (no download); returns `path`.
    A `.safetensors` path is written with safetensors (no pickle: what the quickstarts use); any other name as a
    plain tensor dict with `torch.save` (read back with `weights_only=True`).

    For tests and throughput benchmarks only: the scores it gives are not FIDs. torchvision's Inception-v3
    (`aux_logits=False`, 1008 classes) has the parameter names and shapes of torch-fidelity's
    `FeatureExtractorInceptionV3`, which loads the file strictly. Convolutions get a variance-preserving
    (Kaiming, fan-in) initialization so that the 2048-d features neither vanish nor explode; BatchNorm is identity.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1008)
        for module in network.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if os.fspath(path).endswith(".safetensors"):
        safetensors.torch.save_file({k: v.contiguous() for k, v in network.state_dict().items()}, path)
    else:
        torch.save(network.state_dict(), path)
    return str(path)


def _weights_error(source: str, error: BaseException) -> ValueError:
    """A `ValueError` naming the file; for a refused unpickling, torch's reason without its "retry unsafely" advice."""
    if isinstance(error, pickle.UnpicklingError):
        lines = [line.split("WeightsUnpickler error:")[-1].strip() for line in str(error).splitlines()[1:]]
        reason = " ".join(line for line in lines if line and not line.startswith("Check the documentation"))
        return ValueError(
            f"Refused to load the Inception weights {source}: it is not a plain state dict of tensors ({reason}). "
            f"It was read with torch.load(weights_only=True), so nothing in it was executed; pass the FID "
            f"Inception weights ({INCEPTION_WEIGHTS_FILE})."
        )
    return ValueError(f"Could not read the Inception weights {source}: {type(error).__name__}: {error}")


def load_inception_state_dict(weights_path: str | os.PathLike | None = None) -> dict[str, Tensor]:
    """The FID Inception-v3 state dict, read from a `.safetensors` file or with `torch.load(weights_only=True)`
    (nothing in the file is executed).

    `weights_path=None` downloads torch-fidelity's copy (cached by `torch.hub`; the cached file is read the same
    safe way). Raises `FileNotFoundError` / `ValueError` naming the file when it is missing, not a plain tensor
    dict, or unreadable, and `RuntimeError` when the download fails (with the offline fix).
    """
    if weights_path is None:
        try:
            state = load_state_dict_from_url(
                INCEPTION_WEIGHTS_URL, map_location="cpu", progress=False, weights_only=True
            )
        except pickle.UnpicklingError as error:
            raise _weights_error(f"cached from {INCEPTION_WEIGHTS_URL}", error) from error
        except (OSError, RuntimeError) as error:
            raise RuntimeError(
                "Could not download the FID Inception-v3 weights. Without network access, download "
                f"{INCEPTION_WEIGHTS_FILE} elsewhere and pass its local path with --inception_weights "
                f"(weights_path=...). Cause: {error}"
            ) from error
        source = INCEPTION_WEIGHTS_URL
    else:
        source = os.fspath(weights_path)
        if not os.path.isfile(source):
            raise FileNotFoundError(f"Inception weights file not found: {source}")
        try:
            if source.endswith(".safetensors"):
                state = safetensors.torch.load_file(source)
            else:
                state = torch.load(source, map_location="cpu", weights_only=True)
        except Exception as error:
            raise _weights_error(source, error) from error
    if not isinstance(state, dict) or not all(
        isinstance(key, str) and isinstance(value, Tensor) for key, value in state.items()
    ):
        raise ValueError(
            f"The Inception weights {source} are not a state dict of tensors (got {type(state).__name__})."
        )
    return state


class InceptionFeatureExtractor(nn.Module):
    """2048-d pool features of the FID Inception-v3 (torch-fidelity `inception-v3-compat`, as the ADM evaluator).

    Takes float images `[B, 3, H, W]` in [0, 1]; they are quantized like saved PNGs (`round(x * 255)` to uint8)
    and resized by the network itself to 299 (TF1-compatible bilinear). Returns float32 `[B, 2048]`. Always in
    eval mode and run in float32 (autocast is switched off inside). `pool_and_logits` also returns the 1008-way
    logits without the fc bias (torch-fidelity's `logits_unbiased`, what the Inception Score uses) from the same pass.

    The weights are read by `load_inception_state_dict` (`weights_only=True`) and handed to torch-fidelity as
    tensors only: torch-fidelity's own unrestricted loading never sees a user's file.

    Args:
        weights_path: local copy of the FID Inception weights (`pt_inception-2015-12-05-6726825d.pth`, or
            torch-fidelity's `weights-inception-2015-12-05-6726825d.pth`: same layout). `None` downloads them
            (cached by `torch.hub`).
    """

    num_features = INCEPTION_FEATURE_DIM  # read by torchmetrics (no dummy forward at construction)

    def __init__(self, weights_path: str | os.PathLike | None = None):
        super().__init__()
        state = load_inception_state_dict(weights_path)
        tensors_only = io.BytesIO()
        torch.save(state, tensors_only)  # re-serialized here: plain tensors, nothing from the user's file
        tensors_only.seek(0)
        del state
        source = INCEPTION_WEIGHTS_URL if weights_path is None else os.fspath(weights_path)
        try:
            self.network = FeatureExtractorInceptionV3(
                "inception-v3-compat",
                [str(INCEPTION_FEATURE_DIM), "logits_unbiased"],
                feature_extractor_weights_path=tensors_only,
            )
        except RuntimeError as error:  # load_state_dict: missing / unexpected keys or shapes
            raise ValueError(f"{source} is not an FID Inception-v3 state dict: {error}") from error

    def train(self, mode: bool = True) -> InceptionFeatureExtractor:
        """Stay in eval mode (BatchNorm must use its stored statistics)."""
        return super().train(False)

    def pool_and_logits(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """`([B, 2048] pool features, [B, 1008] logits without the fc bias)`, float32, from one network pass."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"Expected images [B, 3, H, W] in [0, 1], got shape {tuple(images.shape)}.")
        pixels = images.float().clamp(0, 1).mul(255).round().to(torch.uint8)
        with torch.autocast(images.device.type, enabled=False):
            features, logits = self.network(pixels)
        return features, logits

    def forward(self, images: Tensor) -> Tensor:
        return self.pool_and_logits(images)[0]


def check_fid_sample_count(count: int, source: str, advice: str = "add images") -> None:
    """Refuse fewer than 2 images (no covariance) and warn below `MIN_RELIABLE_FID_SAMPLES`; `source` names where
    the images come from (e.g. "the validation split"), `advice` what to do about too few."""
    if count < 2:
        raise ValueError(f"An FID needs at least 2 images, but {source} gives {count}: {advice}.")
    if count < MIN_RELIABLE_FID_SAMPLES:
        logger.warning(
            "The FID over %d images of %s is mostly noise (fewer than %d images): compare it only with runs scored "
            "on the same images, never with published values.",
            count,
            source,
            MIN_RELIABLE_FID_SAMPLES,
        )


def _as_float64(value: ArrayLike) -> Tensor:
    return torch.as_tensor(value).detach().to(dtype=torch.float64)


def _check_statistics(mu: Tensor, sigma: Tensor) -> None:
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"Expected mu [D] and sigma [D, D], got {tuple(mu.shape)} and {tuple(sigma.shape)}.")


def _psd_factor(sigma: Tensor) -> Tensor:
    """`F` `[D, r]` with `sigma = F F^T` (symmetric eigen-decomposition; eigenvalues at rounding level dropped)."""
    eigenvalues, eigenvectors = torch.linalg.eigh((sigma + sigma.T) / 2)
    tolerance = eigenvalues.max().clamp_min(0) * sigma.shape[0] * torch.finfo(sigma.dtype).eps
    keep = eigenvalues > tolerance
    return eigenvectors[:, keep] * eigenvalues[keep].sqrt()


def _frechet_from_factor(mu1: Tensor, sigma1: Tensor, factor1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    """`|mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr sqrt(sigma1 sigma2)`, with `sigma1 = factor1 factor1^T`.

    The eigenvalues of `sigma1 sigma2` are those of the symmetric PSD `factor1^T sigma2 factor1`, so the matrix
    square root needs only symmetric eigen-solvers (stable, and several times faster than a general `eigvals`).
    """
    inner = factor1.T @ sigma2 @ factor1
    trace_sqrt = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp_min(0).sqrt().sum()
    return float((mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt)


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """Fréchet distance between the Gaussians `N(mu1, sigma1)` and `N(mu2, sigma2)`, computed in float64.

    The formula of ADM / torchmetrics with a symmetric, PSD-aware matrix square root instead of a general
    eigen-decomposition of `sigma1 @ sigma2`: equal up to float64 rounding for full-rank covariances and more
    accurate for singular ones (fewer images than features), where `eigvals` turns rounding noise into `sqrt(eps)`.
    """
    mu1, sigma1, mu2, sigma2 = (_as_float64(value) for value in (mu1, sigma1, mu2, sigma2))
    _check_statistics(mu1, sigma1)
    _check_statistics(mu2, sigma2)
    if mu1.shape != mu2.shape:
        raise ValueError(f"Feature dimensions differ: {mu1.shape[0]} and {mu2.shape[0]}.")
    return _frechet_from_factor(mu1, sigma1, _psd_factor(sigma1), mu2, sigma2)


def _moments(feature_sum: Tensor, outer_sum: Tensor, count: Tensor, side: str) -> tuple[Tensor, Tensor]:
    """Mean and unbiased covariance from the feature sum, outer-product sum and count."""
    num = int(count)
    if num < 2:
        raise RuntimeError(f"FID needs at least 2 {side} images, got {num}.")
    mu = feature_sum / num
    sigma = (outer_sum - num * torch.outer(mu, mu)) / (num - 1)
    return mu, sigma


class _SizedFeature(nn.Module):
    """A feature module with its output size attached (torchmetrics then skips its own CPU-only probe)."""

    def __init__(self, module: nn.Module, num_features: int):
        super().__init__()
        self.module = module
        self.num_features = num_features

    def forward(self, images: Tensor) -> Tensor:
        return self.module(images)


@torch.no_grad()
def _probe_num_features(feature: nn.Module, input_img_size: tuple[int, int, int]) -> int:
    """Output size of `feature` on one random image, run where the module's weights are."""
    tensors = [*feature.parameters(), *feature.buffers()]
    device = tensors[0].device if tensors else torch.device("cpu")
    output = feature(torch.rand(1, *input_img_size, device=device))
    if output.ndim != 2:
        raise ValueError(f"The feature module must return [B, D] features, got shape {tuple(output.shape)}.")
    return int(output.shape[1])


class FIDMetric(FrechetInceptionDistance):
    """Streaming Fréchet distance between real and fake image features (`FrechetInceptionDistance` subclass).

    `update(images, real)` takes float images `[B, 3, H, W]` in [0, 1] (`normalize=True` semantics; clamped) and
    accumulates float64 sums only. `compute()` returns a 0-d float64 tensor, summed over processes (see the module
    docstring for the no-padding sharding rule).

    Args:
        feature: any module mapping [0, 1] images to `[B, D]` features (e.g. DINOv2 features for FD-DINOv2);
            default: `InceptionFeatureExtractor(inception_weights)`, the standard FID network.
        inception_weights: local FID Inception weights for the default feature (None downloads them).
        reset_real_features: whether `reset()` also clears the real side.
        input_img_size: `(3, H, W)` of the one random image that measures `D` for a `feature` without a
            `num_features` attribute (run on the module's device).
        **kwargs: further `torchmetrics.Metric` arguments (`sync_on_compute`, `process_group`, ...).
    """

    def __init__(
        self,
        feature: nn.Module | None = None,
        inception_weights: str | os.PathLike | None = None,
        reset_real_features: bool = True,
        input_img_size: tuple[int, int, int] = (3, 299, 299),
        **kwargs: Any,
    ):
        if feature is None:
            feature = InceptionFeatureExtractor(inception_weights)
        elif inception_weights is not None:
            raise ValueError("inception_weights applies to the default Inception feature only; got a feature module.")
        if not hasattr(feature, "num_features"):
            feature = _SizedFeature(feature, _probe_num_features(feature, input_img_size))
        super().__init__(feature=feature, reset_real_features=reset_real_features, normalize=True, **kwargs)
        self._reference: tuple[Tensor, Tensor] | None = None
        self.reference_num_samples: int | None = None
        self._factor_cache: tuple[Tensor, Tensor] | None = None

    @property
    def num_features(self) -> int:
        return int(self.real_features_sum.shape[0])

    def update(self, imgs: Tensor, real: bool) -> None:
        """Add float images `[B, 3, H, W]` in [0, 1] to the real or the fake side."""
        if imgs.ndim != 4 or imgs.shape[1] != 3:
            raise ValueError(f"Expected images [B, 3, H, W] in [0, 1], got shape {tuple(imgs.shape)}.")
        if real and self._reference is not None:
            raise RuntimeError("The real side was given by set_real_statistics(); update() takes fake images only.")
        super().update(imgs.float().clamp(0, 1), real)

    def update_features(self, features: Tensor, real: bool) -> None:
        """Add features `[B, D]` already computed by this metric's feature network (e.g. the pool output of
        `InceptionFeatureExtractor.pool_and_logits`, shared with an Inception Score) to the real or the fake side."""
        if features.ndim != 2 or features.shape[1] != self.num_features:
            raise ValueError(f"Expected features [B, {self.num_features}], got shape {tuple(features.shape)}.")
        if real and self._reference is not None:
            raise RuntimeError("The real side was given by set_real_statistics(); update() takes fake images only.")
        self._computed = None  # what torchmetrics' update wrapper does
        self._update_count += 1
        features = features.detach().double()
        side = "real" if real else "fake"
        getattr(self, f"{side}_features_sum").add_(features.sum(dim=0))
        getattr(self, f"{side}_features_cov_sum").add_(features.T @ features)
        getattr(self, f"{side}_features_num_samples").add_(features.shape[0])

    def _real_moments(self) -> tuple[Tensor, Tensor]:
        if self._reference is not None:
            device = self.fake_features_sum.device
            return self._reference[0].to(device), self._reference[1].to(device)
        return _moments(self.real_features_sum, self.real_features_cov_sum, self.real_features_num_samples, "real")

    def _real_factor(self, sigma: Tensor) -> Tensor:
        """Square-root factor of the real covariance, reused while it is unchanged (e.g. a fixed reference)."""
        cached = self._factor_cache
        if cached is None or cached[0].device != sigma.device or not torch.equal(cached[0], sigma):
            self._factor_cache = cached = (sigma, _psd_factor(sigma))
        return cached[1]

    def compute(self) -> Tensor:
        """Fréchet distance (0-d float64 tensor) between the real side (or the reference) and the fake side."""
        mu_real, sigma_real = self._real_moments()
        mu_fake, sigma_fake = _moments(
            self.fake_features_sum, self.fake_features_cov_sum, self.fake_features_num_samples, "fake"
        )
        distance = _frechet_from_factor(mu_real, sigma_real, self._real_factor(sigma_real), mu_fake, sigma_fake)
        return torch.tensor(distance, dtype=torch.float64, device=self.device)

    def real_statistics(self) -> tuple[Tensor, Tensor]:
        """`(mu [D], sigma [D, D])` float64 of the real side over all processes (a collective), or the reference."""
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=self.sync_on_compute):
            mu, sigma = self._real_moments()
        return mu.clone(), sigma.clone()

    def set_real_statistics(self, mu: ArrayLike, sigma: ArrayLike, num_samples: int | None = None) -> None:
        """Use given statistics (e.g. from `rae_hf.evaluation.load_reference_statistics`) as the real side; real
        `update`s are refused afterwards.

        The reference is identical on every process and is not summed over processes; `reset()` keeps it.
        `num_samples` (images behind the statistics) is only recorded, as `reference_num_samples`.
        """
        mu, sigma = _as_float64(mu).cpu(), _as_float64(sigma).cpu()
        _check_statistics(mu, sigma)
        if mu.shape[0] != self.num_features:
            raise ValueError(f"Reference statistics have {mu.shape[0]} features, this metric {self.num_features}.")
        if not (torch.isfinite(mu).all() and torch.isfinite(sigma).all()):
            raise ValueError("Reference statistics contain NaN or inf.")
        if num_samples is not None and num_samples < 2:
            raise ValueError(f"num_samples={num_samples}: statistics need at least 2 images.")
        self._reference = (mu.clone(), sigma.clone())
        self.reference_num_samples = num_samples
        self._computed = None


__all__ = [
    "INCEPTION_FEATURE_DIM",
    "INCEPTION_WEIGHTS_FILE",
    "INCEPTION_WEIGHTS_URL",
    "MIN_RELIABLE_FID_SAMPLES",
    "FIDMetric",
    "InceptionFeatureExtractor",
    "check_fid_sample_count",
    "frechet_distance",
    "load_inception_state_dict",
    "save_random_inception_weights",
]
