"""Flow-matching core: parametrizations, loss, time sampling, Euler/Heun against hand loops, CFG interval."""

from __future__ import annotations

import math

import pytest
import torch

from rae_hf.diffusion import FlowMatching, drop_labels, guidance_scale_at, guided_velocity, sample_ode, time_grid


def random_state(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1
    e = torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([0.1, 0.4, 0.7, 0.9])
    return x, e, t


def test_noising_and_parametrizations_are_consistent():
    x, e, t = random_state()
    z = FlowMatching().add_noise(x, e, t)
    assert torch.allclose(z, t.view(-1, 1, 1, 1) * x + (1 - t.view(-1, 1, 1, 1)) * e)
    truths = {"x": x, "eps": e, "v": x - e}
    for prediction_type, output in truths.items():
        flow = FlowMatching(prediction_type=prediction_type)
        torch.testing.assert_close(flow.to_clean(output, z, t), x, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(flow.to_noise(output, z, t), e, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(flow.to_velocity(output, z, t), x - e, atol=1e-5, rtol=1e-5)
        for loss_type in ("x", "eps", "v"):
            loss = FlowMatching(prediction_type=prediction_type, loss_type=loss_type).loss(output, x, e, z, t)
            assert loss.shape == (4,) and loss.abs().max() < 1e-8


def test_x_prediction_v_loss_matches_official_formula():
    x, e, t = random_state(1)
    flow = FlowMatching()
    z = flow.add_noise(x, e, t)
    t = torch.tensor([0.2, 0.5, 0.96, 0.99])  # the last two hit the 0.05 clamp
    output = torch.randn_like(x)
    denom = (1 - t).clamp_min(0.05).view(-1, 1, 1, 1)
    expected = (((x - z) / denom - (output - z) / denom) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(flow.loss(output, x, e, z, t), expected)


def test_logit_normal_time_and_noise_scale():
    flow = FlowMatching(noise_scale=2.0)
    t = flow.sample_time(20000, "cpu", torch.Generator().manual_seed(0))
    logits = torch.log(t / (1 - t))
    assert abs(logits.mean().item() + 0.8) < 0.03 and abs(logits.std().item() - 0.8) < 0.03
    noise = flow.sample_noise(torch.zeros(20000), torch.Generator().manual_seed(0))
    assert abs(noise.std().item() - 2.0) < 0.05
    with pytest.raises(ValueError, match="loss_type"):
        FlowMatching(loss_type="score")


def test_drop_labels():
    labels = torch.zeros(10000, dtype=torch.long)
    dropped = drop_labels(labels, 7, 0.1, torch.Generator().manual_seed(0))
    assert set(dropped.unique().tolist()) == {0, 7} and abs((dropped == 7).float().mean().item() - 0.1) < 0.015
    assert drop_labels(labels, 7, 0.0) is labels


def field(z: torch.Tensor, t: float) -> torch.Tensor:
    """A nonlinear test velocity field."""
    return torch.sin(3 * z) * (1 + t) - 0.5 * z * t * t


def test_heun_and_euler_equal_hand_loops():
    z0 = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    steps = 7
    ts = torch.linspace(0, 1, steps + 1)
    euler = z0.clone()
    for i in range(steps):
        euler = euler + (ts[i + 1] - ts[i]).item() * field(euler, ts[i].item())
    heun = z0.clone()
    for i in range(steps - 1):
        t, tn = ts[i].item(), ts[i + 1].item()
        v1 = field(heun, t)
        v2 = field(heun + (tn - t) * v1, tn)
        heun = heun + (tn - t) * (v1 + v2) / 2
    heun = heun + (ts[-1] - ts[-2]).item() * field(heun, ts[-2].item())
    torch.testing.assert_close(sample_ode(field, z0, steps, "euler"), euler, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(sample_ode(field, z0, steps, "heun"), heun, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(euler, heun, atol=1e-4)
    calls = []
    sample_ode(lambda z, t: calls.append(t) or field(z, t), z0, steps, "heun")
    assert len(calls) == 2 * steps - 1 and 1.0 not in calls  # the velocity at t = 1 is never evaluated


def test_guidance_interval_float32_semantics():
    grid = time_grid(50)
    assert grid[5] != 0.1 and abs(grid[5] - 0.1) < 1e-7
    active = [t for t in grid if guidance_scale_at(t, 3.0, (0.1, 1.0)) == 3.0]
    assert active == grid[6:50]  # strict 0.1 < t < 1: the grid point 0.1 and t = 1 get none
    assert guidance_scale_at(0.0, 3.0, (0.0, 1.0)) == 3.0  # lo == 0 includes t = 0
    assert guidance_scale_at(0.5, 3.0, (0.0, 0.4)) == 1.0


def test_guided_velocity_applies_cfg_only_inside_interval():
    batches = []

    def velocity(z, t, cond):
        batches.append((t, z.shape[0]))
        return z * 0 + cond.view(-1, 1).float()  # v_c = label, v_u = null label value

    fn = guided_velocity(velocity, torch.tensor([2, 2]), torch.tensor([0, 0]), 3.0, (0.3, 0.6))
    z = torch.zeros(2, 5)
    assert torch.equal(fn(z, 0.5), torch.full((2, 5), 6.0))  # 0 + 3 * (2 - 0)
    assert torch.equal(fn(z, 0.7), torch.full((2, 5), 2.0))  # outside: conditional only
    assert torch.equal(fn(z, 0.3), torch.full((2, 5), 2.0))
    assert batches == [(0.5, 4), (0.7, 2), (0.3, 2)]  # the unconditional half runs only where guidance is on
    fn_one = guided_velocity(velocity, torch.tensor([2, 2]), torch.tensor([0, 0]), 1.0, (0.0, 1.0))
    assert torch.equal(fn_one(z, 0.5), velocity(z, 0.5, torch.tensor([2, 2])))
    with pytest.raises(ValueError, match="guidance_interval"):
        guided_velocity(velocity, torch.tensor([1]), torch.tensor([0]), 2.0, (0.5, 0.2))
    assert math.isclose(time_grid(2)[1], 0.5)
