"""EMACallback: the update rule, publishing, swapping and its checkpoint state."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rae_hf.callbacks import EMACallback


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    model[0].bias.requires_grad_(False)  # frozen parameters are not averaged
    return model


def test_ema_follows_the_update_rule():
    model, decay = _model(), 0.9
    ema = EMACallback(decay)
    ema.on_train_begin(None, None, None, model=model)
    expected = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert set(ema.shadow) == set(expected) and "0.bias" not in ema.shadow
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.on_step_end(None, None, None, model=model)
        for name, param in model.named_parameters():
            if name in expected:
                expected[name] = decay * expected[name] + (1 - decay) * param.detach()
    for name, value in expected.items():
        torch.testing.assert_close(ema.shadow[name], value, rtol=0, atol=1e-6)


def test_swapped_in_restores_and_copy_to_publishes():
    model = _model()
    ema = EMACallback(0.5)
    ema.on_train_begin(None, None, None, model=model)
    with torch.no_grad():
        model[1].weight.add_(1.0)
    ema.on_step_end(None, None, None, model=model)
    raw = model[1].weight.detach().clone()
    with ema.swapped_in(model):
        torch.testing.assert_close(model[1].weight, raw - 0.5)
    assert torch.equal(model[1].weight, raw)
    ema.on_train_end(None, None, None, model=model)
    torch.testing.assert_close(model[1].weight, raw - 0.5)


def test_state_round_trip_and_validation():
    model = _model()
    ema = EMACallback(0.9)
    with pytest.raises(RuntimeError):
        ema.state_dict()
    ema.on_train_begin(None, None, None, model=model)
    restored = EMACallback(0.9)
    restored.load_state_dict(ema.state_dict())
    restored.on_train_begin(None, None, None, model=model)  # keeps the loaded state
    assert all(torch.equal(restored.shadow[k], ema.shadow[k]) for k in ema.shadow)
    with pytest.raises(ValueError, match="does not match"):
        restored.on_train_begin(None, None, None, model=nn.Linear(2, 2))
    for decay in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="decay"):
            EMACallback(decay)
