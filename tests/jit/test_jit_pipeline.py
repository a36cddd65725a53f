"""JiTPipeline: step-for-step equal to the official sampling loop, CFG semantics, outputs, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from jit_helpers import tiny_model
from PIL import Image

import rae_hf
from rae_hf.pipelines import JiTPipeline


def official_loop(model, z, labels, steps, cfg, interval, sampler="heun"):
    """The official sampler written out: both branches always evaluated, w decided per evaluation time."""
    null = torch.full_like(labels, model.config.num_classes)
    lo, hi = (torch.tensor(v, dtype=torch.float32) for v in interval)
    ts = torch.linspace(0.0, 1.0, steps + 1)

    def velocity(z, t):
        tt = t.expand(z.shape[0])
        denom = (1.0 - tt).clamp_min(0.05).view(-1, 1, 1, 1)
        v_c = (model(z, tt, labels).prediction - z) / denom
        v_u = (model(z, tt, null).prediction - z) / denom
        w = cfg if (t < hi and (lo == 0 or t > lo)) else 1.0
        return v_u + w * (v_c - v_u)

    with torch.no_grad():
        for i in range(steps):
            t, tn = ts[i], ts[i + 1]
            v = velocity(z, t)
            if sampler == "euler" or i == steps - 1:
                z = z + (tn - t) * v
            else:
                z = z + (tn - t) * 0.5 * (v + velocity(z + (tn - t) * v, tn))
    return z


@pytest.mark.parametrize("sampler", ["heun", "euler"])
def test_pipeline_reproduces_official_loop(sampler):
    model = tiny_model(seed=1)
    pipe = JiTPipeline(model)
    pipe.set_progress_bar_config(disable=True)
    labels = torch.tensor([0, 1, 2])
    z0 = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    out = pipe(labels, num_inference_steps=10, sampler=sampler, guidance_scale=2.5, guidance_interval=(0.1, 1.0),
               latents=z0, output_type="latent").images  # fmt: skip
    expected = official_loop(model, z0, labels, 10, 2.5, (0.1, 1.0), sampler)
    assert (out - expected).abs().max() <= 1e-5
    no_cfg = official_loop(model, z0, labels, 10, 1.0, (0.1, 1.0), sampler)
    assert (out - no_cfg).abs().max() > 1e-3  # guidance really changed the samples


def test_guidance_one_equals_conditional_only():
    model = tiny_model(seed=2)
    pipe = JiTPipeline(model)
    pipe.set_progress_bar_config(disable=True)
    z0 = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([2, 0])
    guided = pipe(labels, num_inference_steps=6, guidance_scale=1.0, latents=z0, output_type="latent").images
    z = z0.clone()  # conditional-only Heun loop
    ts = torch.linspace(0, 1, 7)
    with torch.no_grad():
        v = lambda z, t: (model(z, t, labels).prediction - z) / (1 - t).clamp_min(0.05)  # noqa: E731
        for i in range(6):
            dt = ts[i + 1] - ts[i]
            v1 = v(z, ts[i])
            z = z + dt * v1 if i == 5 else z + dt * 0.5 * (v1 + v(z + dt * v1, ts[i + 1]))
    torch.testing.assert_close(guided, z, atol=1e-6, rtol=1e-6)


def test_output_types_seeding_and_round_trip(tmp_path):
    pipe = JiTPipeline(tiny_model(seed=0))
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(num_inference_steps=3, guidance_scale=2.0)
    a = pipe([0, 1], generator=torch.Generator().manual_seed(5), output_type="pt", **kwargs).images
    b = pipe([0, 1], generator=torch.Generator().manual_seed(5), output_type="pt", **kwargs).images
    assert torch.equal(a, b) and a.shape == (2, 3, 16, 16) and a.min() >= 0 and a.max() <= 1
    pil = pipe([0, 1], generator=torch.Generator().manual_seed(5), **kwargs).images
    assert isinstance(pil[0], Image.Image) and pil[0].size == (16, 16)
    arr = pipe([0, 1], generator=torch.Generator().manual_seed(5), output_type="np", **kwargs).images
    np.testing.assert_allclose(arr, a.permute(0, 2, 3, 1).numpy(), atol=1e-6)
    uncond = pipe(None, batch_size=3, output_type="pt", num_inference_steps=2).images
    assert uncond.shape[0] == 3
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = rae_hf.JiTPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    c = loaded([0, 1], generator=torch.Generator().manual_seed(5), output_type="pt", **kwargs).images
    assert torch.equal(a, c)
    with pytest.raises(ValueError, match="class_labels"):
        pipe([7], num_inference_steps=1)
    with pytest.raises(ValueError, match="output_type"):
        pipe([0], output_type="jpeg")
