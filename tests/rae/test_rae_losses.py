"""Tests for the adversarial losses, the adaptive GAN weight and the LPIPS perceptual loss (all offline)."""

import logging
import os
import urllib.error

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from torch import nn

from rae_hf.losses import LPIPSLoss, adaptive_gan_weight, hinge_discriminator_loss, vanilla_generator_loss
from rae_hf.losses.perceptual import _load_vgg16_features


def test_hinge_discriminator_loss_official_scale_hand_values() -> None:
    """Official: 0.5 * (mean(relu(1 - real)) + mean(relu(1 + fake)))."""
    logits_real = torch.tensor([2.0, 0.5, -1.0])  # relu(1 - r) = [0, 0.5, 2]
    logits_fake = torch.tensor([-2.0, 0.0, 0.5])  # relu(1 + f) = [0, 1, 1.5]
    loss = hinge_discriminator_loss(logits_real, logits_fake)
    torch.testing.assert_close(loss, torch.tensor(0.5 * (2.5 / 3 + 2.5 / 3)))
    # per-token logits of a batch: means over every element
    real, fake = torch.tensor([[0.0, 3.0], [1.5, -0.5]]), torch.tensor([[0.5, -1.0], [-4.0, 1.0]])
    torch.testing.assert_close(hinge_discriminator_loss(real, fake), torch.tensor(0.5 * (2.5 / 4 + 3.5 / 4)))


def test_hinge_discriminator_loss_zero_when_margins_met() -> None:
    loss = hinge_discriminator_loss(torch.full((2, 5), 1.5), torch.full((2, 5), -3.0))
    assert loss.item() == 0.0


def test_vanilla_generator_loss_hand_values() -> None:
    logits_fake = torch.tensor([[1.0, 2.0], [3.0, -2.0]], requires_grad=True)
    loss = vanilla_generator_loss(logits_fake)
    torch.testing.assert_close(loss, torch.tensor(-1.0))
    loss.backward()
    torch.testing.assert_close(logits_fake.grad, torch.full((2, 2), -0.25))


def _tiny_generator_losses() -> tuple[nn.Sequential, torch.Tensor, torch.Tensor]:
    """A 2-layer model with a reconstruction-like and a GAN-like loss sharing one graph."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    x, target, direction = torch.randn(5, 4), torch.randn(5, 3), torch.randn(5, 3)
    out = model(x)
    rec_loss = (out - target).abs().mean() + (out**2).mean()
    gan_loss = -(out * direction).mean()
    return model, rec_loss, gan_loss


def test_adaptive_gan_weight_matches_manual_gradients() -> None:
    model, rec_loss, gan_loss = _tiny_generator_losses()
    last = model[2].weight
    d_weight = adaptive_gan_weight(rec_loss, gan_loss, last)
    assert d_weight.dim() == 0 and not d_weight.requires_grad
    assert last.grad is None  # .grad is never touched

    # Manual: an identical (seeded) model, separate backward passes, reading .grad.
    manual_model, rec, gan = _tiny_generator_losses()
    rec.backward(retain_graph=True)
    rec_grad = manual_model[2].weight.grad.clone()
    manual_model.zero_grad()
    gan.backward()
    gan_grad = manual_model[2].weight.grad.clone()
    expected = rec_grad.norm() / (gan_grad.norm() + 1e-6)
    torch.testing.assert_close(d_weight, expected)
    assert 0.0 < d_weight.item() < 1e4

    # The graph is retained: the caller can still backprop the combined loss.
    (rec_loss + d_weight * gan_loss).backward()
    assert last.grad is not None


def test_adaptive_gan_weight_clamps() -> None:
    model, rec_loss, gan_loss = _tiny_generator_losses()
    last = model[2].weight
    tiny_gan = gan_loss * 1e-9  # ratio ~1e9 -> clamped to the max
    assert adaptive_gan_weight(rec_loss, tiny_gan, last).item() == 1e4
    assert adaptive_gan_weight(rec_loss, tiny_gan, last, max_d_weight=5.0).item() == 5.0
    unclamped = adaptive_gan_weight(rec_loss, gan_loss, last).item()
    half = adaptive_gan_weight(rec_loss, gan_loss, last, max_d_weight=unclamped / 2)
    assert half.item() == pytest.approx(unclamped / 2)


class _ListHandler(logging.Handler):
    """Collects log records (caplog is function-scoped; the LPIPS fixture is module-scoped to build VGG once)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def random_lpips_and_logs() -> tuple[LPIPSLoss, list[logging.LogRecord]]:
    handler = _ListHandler()
    logger = logging.getLogger("rae_hf.losses.perceptual")
    logger.addHandler(handler)
    try:
        torch.manual_seed(0)
        loss = LPIPSLoss(pretrained_backbone=False)
    finally:
        logger.removeHandler(handler)
    return loss, handler.records


@pytest.fixture(scope="module")
def random_lpips(random_lpips_and_logs: tuple[LPIPSLoss, list[logging.LogRecord]]) -> LPIPSLoss:
    return random_lpips_and_logs[0]


def test_lpips_random_backbone_logs_warning(random_lpips_and_logs: tuple[LPIPSLoss, list[logging.LogRecord]]) -> None:
    assert any("not meaningful" in record.getMessage() for record in random_lpips_and_logs[1])


def test_lpips_zero_for_identical_positive_otherwise(random_lpips: LPIPSLoss) -> None:
    torch.manual_seed(1)
    x = torch.rand(2, 3, 32, 32)
    same = random_lpips(x, x.clone())
    assert same.dim() == 0
    assert same.abs().item() < 1e-6
    assert random_lpips(x, torch.rand(2, 3, 32, 32)).item() > 0.0


def test_lpips_differentiable_and_frozen(random_lpips: LPIPSLoss) -> None:
    torch.manual_seed(2)
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    y = torch.rand(2, 3, 32, 32)
    random_lpips(x, y).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    params = list(random_lpips.parameters())
    assert params and all(not p.requires_grad and p.grad is None for p in params)


def test_lpips_stays_in_eval_mode(random_lpips: LPIPSLoss) -> None:
    random_lpips.train()
    assert random_lpips.training
    assert not any(m.training for m in random_lpips.lpips.modules())


def test_lpips_loads_local_backbone_weights(random_lpips: LPIPSLoss, tmp_path: os.PathLike) -> None:
    # A torchvision-style vgg16 state dict (``features.*`` keys) with known values.
    trunk = random_lpips.lpips.net.state_dict()
    source = {"features." + key.split(".", 1)[1]: torch.full_like(value, 0.01) for key, value in trunk.items()}
    path = os.path.join(tmp_path, "vgg16.pth")
    torch.save(source, path)
    loss = LPIPSLoss(backbone_weights=path)
    for key, value in loss.lpips.net.state_dict().items():
        assert torch.equal(value, source["features." + key.split(".", 1)[1]])
    assert not any(p.requires_grad for p in loss.parameters())


def test_lpips_rejects_bad_weights_and_conflicting_args(random_lpips: LPIPSLoss, tmp_path: os.PathLike) -> None:
    path = os.path.join(tmp_path, "bad.pth")
    torch.save({"foo": torch.zeros(1)}, path)
    before = {k: v.clone() for k, v in random_lpips.lpips.net.state_dict().items()}
    with pytest.raises(ValueError, match="vgg16"):
        _load_vgg16_features(random_lpips.lpips.net, path)
    assert all(torch.equal(v, before[k]) for k, v in random_lpips.lpips.net.state_dict().items())
    with pytest.raises(ValueError, match="pretrained_backbone=False"):
        LPIPSLoss(pretrained_backbone=False, backbone_weights=path)


def test_lpips_download_failure_raises_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline_vgg16(**kwargs: object) -> nn.Module:
        raise urllib.error.URLError("offline")

    monkeypatch.setattr("rae_hf.losses.perceptual.load_state_dict_from_url", offline_vgg16)
    with pytest.raises(RuntimeError, match="backbone_weights"):
        LPIPSLoss()
