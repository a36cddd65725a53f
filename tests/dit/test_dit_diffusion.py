"""Flow-matching core for RAE stage 2: time shift, conventions, time sampling, velocity loss, sampling grid,
DiT-DH guidance rule, autoguidance, Heun vs Euler on the shifted grid."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from rae_hf.diffusion import (
    FlowMatching,
    autoguided_velocity,
    from_rae_velocity,
    guidance_scale_at,
    guided_velocity,
    rae_guidance_interval,
    rae_time_grid,
    rae_time_shift,
    rae_velocity,
    sample_ode,
    shift_rae_time,
    shift_time,
    to_rae_time,
)

S48 = math.sqrt(48.0)


def test_time_shift_at_given_times():
    assert rae_time_shift(768 * 16 * 16) == pytest.approx(6.928203, abs=1e-6)  # 256 px
    assert rae_time_shift(768 * 32 * 32) == pytest.approx(math.sqrt(192.0))  # 512 px
    # by hand: s t / (1 + (s - 1) t) with s = 6.928203; t = 0.5 -> s / (1 + s) = 6.928203 / 7.928203
    assert shift_rae_time(0.5, S48) == pytest.approx(0.873868, abs=1e-6)
    assert shift_rae_time(0.25, S48) == pytest.approx(1.732051 / 2.482051, abs=1e-6)  # 0.697831
    assert shift_rae_time(0.9, S48) == pytest.approx(0.984216, abs=1e-6)
    # core time (t = 1 data): tau / (s - (s - 1) tau); tau = 0.5 -> 1 / (1 + s)
    assert shift_time(0.5, S48) == pytest.approx(0.126132, abs=1e-6)
    assert shift_time(0.1, S48) == pytest.approx(1 - shift_rae_time(0.9, S48), abs=1e-12)
    t = torch.tensor([0.0, 1.0])
    assert torch.equal(shift_rae_time(t, S48), t) and torch.equal(shift_time(t, S48), t)  # end points fixed
    with pytest.raises(ValueError, match="shift"):
        shift_rae_time(0.5, 0.0)


def test_rae_time_grid_is_the_official_float32_grid():
    grid = rae_time_grid(49, S48)  # the official 50-point grid: 49 steps
    official = S48 * (1 - torch.linspace(0, 0.999, 50)) / (1 + (S48 - 1) * (1 - torch.linspace(0, 0.999, 50)))
    rae = torch.tensor([to_rae_time(t) for t in grid], dtype=torch.float64)
    assert len(grid) == 50 and torch.equal(rae.float().double(), rae)  # exactly float32 values
    assert torch.equal(rae.float(), official)
    assert rae[0].item() == 1.0 and abs(rae[1].item() - 0.99701) < 1e-5
    assert abs(rae[-2].item() - 0.13151) < 1e-5 and abs(rae[-1].item() - 0.00689) < 1e-5
    assert all(b > a for a, b in itertools.pairwise(grid))  # increasing in core time
    with pytest.raises(ValueError, match="num_inference_steps"):
        rae_time_grid(0, S48)


def test_rae_time_sampling_truncation_and_shift():
    n = 40000
    flow = FlowMatching.rae_stage2("logit-normal_0_1")
    assert flow.prediction_type == "v" and flow.loss_type == "v"
    t_rae = to_rae_time(flow.sample_time(n, "cpu", torch.Generator().manual_seed(0)))
    logits = torch.logit(t_rae.double())
    assert t_rae.max() <= 0.999 + 1e-7 and t_rae.min() >= 0
    assert abs(logits.mean().item()) < 0.02 and abs(logits.std().item() - 1) < 0.02  # sigmoid(N(0, 1))
    # the truncation is real: cut at 0.5, P(t < 0.25) = Phi(logit 0.25) / Phi(0) = 0.13595 / 0.5
    cut = to_rae_time(FlowMatching.rae_stage2(t_max=0.5).sample_time(n, "cpu", torch.Generator().manual_seed(1)))
    assert cut.max() <= 0.5 + 1e-7 and abs((cut < 0.25).float().mean().item() - 0.2719) < 0.012
    uniform = to_rae_time(FlowMatching.rae_stage2("uniform").sample_time(n, "cpu", torch.Generator().manual_seed(2)))
    assert uniform.min() >= 0 and uniform.max() <= 0.999 + 1e-7 and abs(uniform.mean().item() - 0.4995) < 0.005
    shifted = FlowMatching.rae_stage2("uniform", time_shift=S48).sample_time(8, "cpu", torch.Generator().manual_seed(3))
    plain = FlowMatching.rae_stage2("uniform").sample_time(8, "cpu", torch.Generator().manual_seed(3))
    torch.testing.assert_close(to_rae_time(shifted), shift_rae_time(to_rae_time(plain), S48))
    # JiT's untruncated logit-normal keeps its random stream
    jit = FlowMatching().sample_time(8, "cpu", torch.Generator().manual_seed(4))
    assert torch.equal(jit, torch.sigmoid(torch.randn(8, generator=torch.Generator().manual_seed(4)) * 0.8 - 0.8))
    for bad in ("beta", "logit-normal_0", "uniform_1"):
        with pytest.raises(ValueError, match="time_dist_type"):
            FlowMatching.rae_stage2(bad)
    with pytest.raises(ValueError, match="time_range"):
        FlowMatching(time_range=(0.5, 0.5))


def test_velocity_loss_is_the_official_one_near_data_too():
    g = torch.Generator().manual_seed(0)
    x, e = torch.randn(4, 3, 4, 4, generator=g), torch.randn(4, 3, 4, 4, generator=g)
    t_rae = torch.tensor([0.001, 0.02, 0.5, 0.999])  # 0.001 and 0.02 are where JiT's 1 - t clamp would act
    flow = FlowMatching.rae_stage2()
    z = flow.add_noise(x, e, to_rae_time(t_rae))
    torch.testing.assert_close(z, (1 - t_rae.view(-1, 1, 1, 1)) * x + t_rae.view(-1, 1, 1, 1) * e)
    output_rae = torch.randn(4, 3, 4, 4, generator=g)  # what the network returns: a velocity e - x
    loss = flow.loss(from_rae_velocity(output_rae), x, e, z, to_rae_time(t_rae))
    expected = ((output_rae - (e - x)) ** 2).mean(dim=(1, 2, 3))  # mean over C, H, W; no weighting
    torch.testing.assert_close(loss, expected)
    assert flow.loss(from_rae_velocity(e - x), x, e, z, to_rae_time(t_rae)).abs().max() == 0


class RecordingNet(torch.nn.Module):
    """Velocity `e - x`-style network in RAE time that records the timesteps it is given."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor(0.5))
        self.seen: list[torch.Tensor] = []

    @property
    def dtype(self) -> torch.dtype:
        return self.weight.dtype

    def forward(self, z, timesteps, labels):
        self.seen.append(timesteps)
        prediction = self.weight * z * timesteps.view(-1, 1) + labels.view(-1, 1).float()
        return type("Out", (), {"prediction": prediction})()


def test_rae_velocity_passes_official_float32_times():
    net, z = RecordingNet(), torch.ones(3, 2)
    grid = rae_time_grid(49, S48)
    v = rae_velocity(net, z, grid[1], torch.tensor([0, 1, 2]))
    official_t = (S48 * (1 - torch.linspace(0, 0.999, 50)) / (1 + (S48 - 1) * (1 - torch.linspace(0, 0.999, 50))))[1]
    assert net.seen[-1].dtype == torch.float32 and torch.equal(net.seen[-1], official_t.expand(3))
    assert torch.equal(v, -(0.5 * z * official_t + torch.tensor([[0.0], [1.0], [2.0]])))
    rae_velocity(net, z, torch.tensor([0.25, 0.5, 1.0]), torch.tensor([0, 0, 0]))  # training: [B] core times
    assert torch.equal(net.seen[-1], torch.tensor([0.75, 0.5, 0.0]))


class Wrapper(torch.nn.Module):
    """A DDP-like wrapper: no `.dtype`, the network under `.module`; records the dtype of the latents it gets."""

    def __init__(self, module):
        super().__init__()
        self.module = module
        self.input_dtype = None

    def forward(self, z, *args):
        self.input_dtype = z.dtype
        return self.module(z, *args)


def test_rae_velocity_reads_the_dtype_of_wrapped_networks():
    net = RecordingNet().double()
    wrapped = Wrapper(net)
    assert not hasattr(wrapped, "dtype")
    z, labels = torch.ones(3, 2), torch.tensor([0, 1, 2])
    v = rae_velocity(wrapped, z, 0.5, labels)
    expected = -(0.5 * z.double() * 0.5 + labels.view(-1, 1).double()).float()
    assert wrapped.input_dtype == torch.float64  # the parameters' dtype, not the wrapper's (it has none)
    assert v.dtype == torch.float32 and torch.equal(v, expected)


def test_dit_dh_guidance_rule_is_inclusive_and_needs_scale_above_one():
    assert guidance_scale_at(0.5, 3.0, (0.2, 0.5), rule="dit_dh") == 3.0  # t_max included (JiT: excluded)
    assert guidance_scale_at(0.5, 3.0, (0.2, 0.5), rule="jit") == 1.0
    assert guidance_scale_at(0.2, 3.0, (0.2, 0.5), rule="dit_dh") == 3.0  # t_min included (JiT: excluded)
    assert guidance_scale_at(0.19, 3.0, (0.2, 0.5), rule="dit_dh") == 1.0
    assert guidance_scale_at(0.3, 1.0, (0.0, 1.0), rule="dit_dh") == 1.0
    assert guidance_scale_at(0.3, 0.5, (0.0, 1.0), rule="dit_dh") == 1.0  # scale <= 1: off (JiT would apply it)
    assert guidance_scale_at(0.3, 0.5, (0.0, 1.0), rule="jit") == 0.5
    with pytest.raises(ValueError, match="rule"):
        guidance_scale_at(0.3, 2.0, rule="edm")


def test_rae_interval_selects_the_official_steps():
    grid = rae_time_grid(49, S48)
    t32 = torch.tensor([to_rae_time(t) for t in grid[:-1]], dtype=torch.float32)  # evaluated times, RAE
    for t_min, t_max in [(0.0, 1.0), (0.1, 0.5), (t32[30].item(), t32[10].item()), (0.3, 0.3000001)]:
        interval = rae_guidance_interval((t_min, t_max))
        ours = [guidance_scale_at(t, 2.0, interval, rule="dit_dh") == 2.0 for t in grid[:-1]]
        official = ((t32 >= t_min) & (t32 <= t_max)).tolist()  # both bounds inclusive, float32 comparisons
        assert ours == official
    assert sum(ours) == 0 and rae_guidance_interval((0.0, 1.0)) == (0.0, 1.0)
    interval = rae_guidance_interval((t32[30].item(), t32[10].item()))
    assert [guidance_scale_at(t, 2.0, interval, "dit_dh") for t in grid[:-1]].count(2.0) == 21  # ends included


def linear_field(z: torch.Tensor, t: float, cond: torch.Tensor) -> torch.Tensor:
    return -z * (1 + cond.view(-1, 1).float()) * t


def test_cfg_and_autoguidance_combine_as_published():
    z, cond, null = torch.ones(2, 3), torch.tensor([1, 2]), torch.tensor([0, 0])
    cfg = guided_velocity(linear_field, cond, null, 4.0, (0.0, 1.0), rule="dit_dh")
    v_c, v_u = linear_field(z, 0.5, cond), linear_field(z, 0.5, null)
    torch.testing.assert_close(cfg(z, 0.5), v_u + 4.0 * (v_c - v_u))
    guide_calls = []

    def guide(z, t, c):
        guide_calls.append(t)
        return 0.5 * linear_field(z, t, c)

    auto = autoguided_velocity(linear_field, guide, cond, 1.5, (0.0, 0.6))
    v_g = 0.5 * v_c
    torch.testing.assert_close(auto(z, 0.5), v_g + 1.5 * (v_c - v_g))  # v_G + w (v_M - v_G)
    assert torch.equal(auto(z, 0.7), linear_field(z, 0.7, cond)) and guide_calls == [0.5]
    self_guided = autoguided_velocity(linear_field, linear_field, cond, 3.0, (0.0, 1.0))
    assert torch.equal(self_guided(z, 0.5), v_c)  # the model as its own guide: no guidance
    assert torch.equal(autoguided_velocity(linear_field, guide, cond, 1.0)(z, 0.5), v_c)
    with pytest.raises(ValueError, match="guidance_interval"):
        autoguided_velocity(linear_field, guide, cond, 2.0, (0.6, 0.2))


def test_heun_is_second_order_and_euler_first_order_on_the_shifted_grid():
    z0 = torch.randn(4, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    lam = 1.3

    def field(z, t):  # dz/dt = lam * z: exact z0 exp(lam (t1 - t0))
        return lam * z

    errors = {}
    for steps in (49, 196):
        grid = rae_time_grid(steps, S48)
        exact = z0 * math.exp(lam * (grid[-1] - grid[0]))
        for sampler in ("euler", "heun"):
            errors[sampler, steps] = (sample_ode(field, z0, grid, sampler) - exact).abs().max().item()
    assert errors["heun", 49] < errors["euler", 49] / 3  # 0.106 vs 0.349 (the last step is Euler)
    assert 3.0 < errors["euler", 49] / errors["euler", 196] < 5.0  # first order: 4x for 4x the steps
    assert errors["heun", 49] / errors["heun", 196] > 10.0  # second order: 12.3x measured
    calls = []
    sample_ode(lambda z, t: calls.append(t) or field(z, t), z0, rae_time_grid(5, S48), "heun")
    assert len(calls) == 9  # 4 Heun steps (2 evaluations) + a final Euler step
    with pytest.raises(ValueError, match="increasing"):
        sample_ode(field, z0, [0.0, 0.5, 0.5, 1.0], "euler")
