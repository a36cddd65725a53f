"""Frozen LPIPS (VGG16) perceptual loss with offline-friendly backbone loading."""

import logging
import warnings

import lpips
import torch
from torch import nn
from torch.hub import load_state_dict_from_url
from torchvision.models import VGG16_Weights

__all__ = ["LPIPSLoss"]

logger = logging.getLogger(__name__)


def _build_lpips(random_backbone: bool) -> lpips.LPIPS:
    """Build ``lpips.LPIPS(net="vgg")`` with its calibrated linear layers (shipped with the package).

    ``lpips`` calls ``torchvision.models.vgg16(pretrained=...)``; torchvision still accepts that deprecated
    argument, so only its deprecation warnings are silenced here.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"The parameter 'pretrained' is deprecated", category=UserWarning)
        warnings.filterwarnings("ignore", message=r"Arguments other than a weight enum", category=UserWarning)
        return lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=random_backbone, verbose=False)


def _load_vgg16_features(net: nn.Module, path: str | dict) -> None:
    """Load the ``features.*`` weights of a torchvision ``vgg16`` state dict (a file, read weights-only, or the dict)
    into the LPIPS trunk.

    The LPIPS trunk stores ``features[i]`` as ``slice{k}.{i}``, so keys map as ``slice{k}.{i}.p -> features.{i}.p``.
    """
    source = path if isinstance(path, dict) else torch.load(path, map_location="cpu", weights_only=True)
    mapping = {key: "features." + key.split(".", 1)[1] for key in net.state_dict()}
    missing = sorted(src for src in mapping.values() if src not in source)
    if missing:
        raise ValueError(f"{path!r} is not a torchvision vgg16 state dict: missing keys {missing[:4]}...")
    net.load_state_dict({key: source[src] for key, src in mapping.items()}, strict=True)


class LPIPSLoss(nn.Module):
    """Mean LPIPS-VGG distance between two batches of images in ``[0, 1]``.

    The network is frozen (no parameter grads, always in eval mode) but differentiable w.r.t. its inputs.

    Args:
        pretrained_backbone: Use ImageNet VGG16 weights for the trunk. ``False`` uses a random trunk (tests / CPU
            quickstart only: the loss is then not perceptually meaningful).
        backbone_weights: Local path to a torchvision ``vgg16`` state dict (e.g. ``vgg16-397923af.pth``); when
            ``None`` and ``pretrained_backbone`` is set, torchvision downloads (or reads its cache).
    """

    def __init__(self, pretrained_backbone: bool = True, backbone_weights: str | None = None) -> None:
        super().__init__()
        if backbone_weights is not None and not pretrained_backbone:
            raise ValueError("backbone_weights was given but pretrained_backbone=False; drop one of them.")
        if not pretrained_backbone:
            logger.warning(
                "LPIPSLoss uses a randomly initialised VGG16 trunk (pretrained_backbone=False): "
                "the perceptual loss is not meaningful; use only for tests or smoke runs."
            )
            self.lpips = _build_lpips(random_backbone=True)
        elif backbone_weights is not None:
            self.lpips = _build_lpips(random_backbone=True)
            _load_vgg16_features(self.lpips.net, backbone_weights)
        else:
            self.lpips = _build_lpips(random_backbone=True)
            try:  # torchvision would read its (user-fillable) hub cache with weights_only=False
                vgg16 = load_state_dict_from_url(
                    url=VGG16_Weights.IMAGENET1K_V1.url, progress=False, check_hash=True, weights_only=True
                )
            except OSError as err:
                raise RuntimeError(
                    "LPIPSLoss could not download the torchvision VGG16 weights. Pass backbone_weights=<local path "
                    "to a torchvision vgg16 state dict> (e.g. vgg16-397923af.pth), place it in the torch hub cache, "
                    "or set pretrained_backbone=False for offline tests (loss then not meaningful)."
                ) from err
            _load_vgg16_features(self.lpips.net, vgg16)
        self.lpips.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> "LPIPSLoss":
        """Keep the frozen LPIPS network in eval mode (no dropout) regardless of ``mode``."""
        super().train(mode)
        self.lpips.eval()
        return self

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean LPIPS over the batch for images ``[B, 3, H, W]`` in ``[0, 1]``."""
        return self.lpips(x * 2.0 - 1.0, y * 2.0 - 1.0).mean()
