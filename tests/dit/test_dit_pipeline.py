"""RAEDiTPipeline: step-for-step equal to the official sampler (Euler, CFG, autoguidance), guidance semantics, Heun,
outputs decoded by the RAE, save/load round trips, and the class-balanced gFID/IS glue."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import tiny_rae
from diffusers import DiffusionPipeline
from fid_ddp_worker import TinyInception
from PIL import Image

import rae_hf
from rae_hf.models.dit import DiTDHConfig, DiTDHModel
from rae_hf.pipelines import RAEDiTPipeline
from rae_hf.pipelines.pipeline_rae_dit import guidance_sweep, make_sample_fn

NUM_CLASSES = 5
LATENT = (32, 4, 4)  # the tiny RAE of conftest: width 32, 4 x 4 tokens, 32 px images
SHIFT = math.sqrt(32 * 4 * 4 / 4096)


@torch.no_grad()
def tiny_dit(seed: int = 0, hidden: int = 48) -> DiTDHModel:
    """A tiny DiT-DH whose zero-initialized layers (adaLN, final linear) get random values, so outputs are real."""
    torch.manual_seed(seed)
    config = DiTDHConfig(
        in_channels=32,
        input_size=4,
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=3,
        head_hidden_size=32,
        head_num_layers=1,
        head_num_attention_heads=2,
        num_classes=NUM_CLASSES,
    )
    model = DiTDHModel(config).eval()
    generator = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    table = model.y_embedder.embedding_table.weight
    table.copy_(torch.randn(table.shape, generator=generator))  # labels that matter, so guidance shows
    return model


def tiny_vae() -> rae_hf.RAEModel:
    vae = tiny_rae(seed=0).eval()
    generator = torch.Generator().manual_seed(1)
    vae.set_latent_stats(torch.randn(LATENT, generator=generator), torch.rand(LATENT, generator=generator) + 0.5)
    return vae


def make_pipe(seed: int = 0) -> RAEDiTPipeline:
    pipe = RAEDiTPipeline(transformer=tiny_dit(seed), vae=tiny_vae())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def record_inputs(model: torch.nn.Module) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(tuple(a.clone() for a in args)))
    return calls


def official_sampler(model, z, labels, num_points, shift, scale=1.0, interval=(0.0, 1.0), guide=None):
    """The official Euler sampler written from its facts: float32 grid 1 - linspace(0, 0.999, N) then the shift;
    x <- x + (t_{i+1} - t_i) v(x, t_i); guidance only when scale > 1, with the doubled batch [z; z], labels
    [y; null] and the per-sample inclusive test t_min <= t <= t_max; autoguidance v_G + w (v_M - v_G)."""
    t = 1 - torch.linspace(0, 0.999, num_points)
    t = shift * t / (1 + (shift - 1) * t)
    null = torch.full_like(labels, NUM_CLASSES)
    with torch.no_grad():
        for i in range(num_points - 1):
            tt = torch.ones(z.shape[0]) * t[i]
            if scale > 1:
                zz, yy, t2 = torch.cat([z, z]), torch.cat([labels, null]), torch.cat([tt, tt])
                v_c, v_u = model(zz, t2, yy).prediction.chunk(2)
                if guide is not None:
                    v_u = guide(zz, t2, yy).prediction.chunk(2)[0]  # the guide on the same labels
                inside = ((tt >= interval[0]) & (tt <= interval[1])).view(-1, 1, 1, 1)
                v = torch.where(inside, v_u + scale * (v_c - v_u), v_c)
            else:
                v = model(z, tt, labels).prediction
            z = z + (t[i + 1] - t[i]) * v
    return z


def noise(batch: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, *LATENT, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    ("guidance", "scale", "interval"),
    [(None, 1.0, (0.0, 1.0)), ("cfg", 3.0, (0.0, 1.0)), ("cfg", 2.5, (0.2, 0.7)), ("autoguidance", 1.8, (0.1, 1.0))],
)
def test_euler_equals_the_official_sampler_step_for_step(guidance, scale, interval):
    pipe, guide = make_pipe(0), tiny_dit(seed=7, hidden=24)
    labels, z0 = torch.tensor([0, 3, NUM_CLASSES]), noise()
    ours = record_inputs(pipe.transformer)
    guide = guide if guidance == "autoguidance" else None
    kwargs = dict(guidance=guidance, guidance_scale=scale, guidance_interval=interval, guidance_model=guide)
    out = pipe(labels, num_inference_steps=12, latents=z0, output_type="latent", **kwargs).images
    reference = official_sampler(pipe.transformer, z0, labels, 13, SHIFT, scale, interval, guide)
    official, ours = ours[len(ours) // 2 :], ours[: len(ours) // 2]  # the hook saw both runs
    assert len(ours) == 12  # one network call per Euler step (the last grid point is never evaluated)
    for (z_a, t_a, y_a), (z_b, t_b, y_b) in zip(ours, official, strict=True):
        n = z0.shape[0]  # compare the conditional halves: the official always doubles the batch when scale > 1
        assert torch.equal(t_a[:n], t_b[:n]) and t_a.dtype == torch.float32 and torch.equal(y_a[:n], y_b[:n])
        assert (z_a[:n] - z_b[:n]).abs().max() <= 1e-6
    assert (out - reference).abs().max() <= 1e-6
    unguided = official_sampler(pipe.transformer, z0, labels, 13, SHIFT)
    assert guidance is None or (out - unguided).abs().max() > 1e-3  # guidance really acted


def test_scale_one_cfg_and_self_autoguidance_equal_no_guidance():
    pipe = make_pipe(1)
    labels, z0 = torch.tensor([1, 2]), noise(2, 3)
    kwargs = dict(num_inference_steps=6, latents=z0, output_type="latent")
    plain = pipe(labels, **kwargs).images
    assert torch.equal(pipe(labels, guidance="cfg", guidance_scale=1.0, **kwargs).images, plain)
    assert torch.equal(pipe(labels, guidance="cfg", guidance_scale=0.7, **kwargs).images, plain)  # needs > 1
    own = pipe(labels, guidance="autoguidance", guidance_scale=2.0, guidance_model=pipe.transformer, **kwargs).images
    assert (own - plain).abs().max() == 0  # v_M + w (v_M - v_M) = v_M exactly


def test_cfg_interval_is_inclusive_in_rae_time_after_the_shift():
    pipe = make_pipe(2)
    calls = record_inputs(pipe.transformer)
    t = 1 - torch.linspace(0, 0.999, 11)
    t = SHIFT * t / (1 + (SHIFT - 1) * t)  # the official grid; t[:-1] are evaluated
    t_min, t_max = t[7].item(), t[2].item()  # bounds exactly on grid points: both guided
    pipe([0, 1], num_inference_steps=10, guidance="cfg", guidance_scale=2.0, guidance_interval=(t_min, t_max),
         output_type="latent", generator=torch.Generator().manual_seed(0))  # fmt: skip
    doubled = [round(timesteps[0].item(), 6) for _, timesteps, _ in calls if timesteps.shape[0] == 4]
    assert doubled == [round(v, 6) for v in t[2:8].tolist()] and len(calls) == 10
    assert torch.equal(calls[2][2], torch.tensor([0, 1, NUM_CLASSES, NUM_CLASSES]))  # labels [y; null]
    calls.clear()
    pipe([0, 1], num_inference_steps=10, guidance="cfg", guidance_scale=2.0, guidance_interval=(0.0, 1.0),
         output_type="latent")  # fmt: skip
    assert calls[0][1][0].item() == t[0].item() and all(c[1].shape[0] == 4 for c in calls)  # (0, 1): every step


def test_heun_runs_on_the_same_grid_and_differs_from_euler():
    pipe = make_pipe(3)
    calls = record_inputs(pipe.transformer)
    labels, z0 = torch.tensor([4, 0]), noise(2, 5)
    heun = pipe(labels, num_inference_steps=8, sampler="heun", latents=z0, output_type="latent").images
    assert len(calls) == 2 * 8 - 1  # Heun steps and a final Euler step
    euler = pipe(labels, num_inference_steps=8, latents=z0, output_type="latent").images
    assert torch.isfinite(heun).all() and (heun - euler).abs().max() > 1e-4
    evaluated = sorted({c[1][0].item() for c in calls[:15]}, reverse=True)
    t = 1 - torch.linspace(0, 0.999, 9)
    assert torch.equal(torch.tensor(evaluated), (SHIFT * t / (1 + (SHIFT - 1) * t))[:-1])  # the grid but its end


def test_time_shift_override_sets_the_grid():
    pipe = make_pipe(3)
    calls = record_inputs(pipe.transformer)
    s = math.sqrt(48.0)  # e.g. a DiT trained with time_shift_dim 196608 on these tiny latents
    pipe([1], num_inference_steps=4, time_shift=s, output_type="latent")
    t = 1 - torch.linspace(0, 0.999, 5)
    assert torch.equal(torch.cat([c[1] for c in calls]), (s * t / (1 + (s - 1) * t))[:-1])
    assert pipe.default_time_shift() == pytest.approx(SHIFT)
    pipe.transformer.config.time_shift = s  # what the trainer records for such a run: the pipeline's default
    calls.clear()
    pipe([1], num_inference_steps=4, output_type="latent")
    assert pipe.default_time_shift() == s
    assert torch.equal(torch.cat([c[1] for c in calls]), (s * t / (1 + (s - 1) * t))[:-1])


def test_outputs_are_rae_decodings(tmp_path):
    pipe = make_pipe(4)
    kwargs = dict(num_inference_steps=3, guidance="cfg", guidance_scale=2.0)
    latent = pipe([0, 1], generator=torch.Generator().manual_seed(5), output_type="latent", **kwargs).images
    images = pipe([0, 1], generator=torch.Generator().manual_seed(5), output_type="pt", **kwargs).images
    with torch.no_grad():
        decoded = pipe.vae.decode(latent).reconstruction.clamp(0, 1)  # de-normalized with the RAE's statistics
    assert images.shape == (2, 3, 32, 32) and torch.equal(images, decoded)
    arr = pipe([0, 1], generator=torch.Generator().manual_seed(5), output_type="np", **kwargs).images
    assert arr.dtype == np.uint8 and arr.shape == (2, 32, 32, 3)
    np.testing.assert_array_equal(arr, (decoded * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())  # truncated
    pil = pipe([0, 1], generator=torch.Generator().manual_seed(5), **kwargs).images
    assert isinstance(pil[0], Image.Image) and np.array_equal(np.asarray(pil[1]), arr[1])
    assert pipe(None, batch_size=3, num_inference_steps=2, output_type="pt").images.shape[0] == 3  # null class
    for kwargs, match in [
        (dict(class_labels=[NUM_CLASSES + 1]), "class_labels"),
        (dict(class_labels=[0], output_type="jpeg"), "output_type"),
        (dict(class_labels=[0], sampler="dopri5"), "sampler"),
        (dict(class_labels=[0], guidance_scale=2.0), "guidance_scale"),
        (dict(class_labels=[0], guidance="autoguidance", guidance_scale=2.0), "guidance_model"),
        (dict(class_labels=[0], guidance="pag"), "guidance"),
        (dict(class_labels=[0], latents=torch.zeros(2, *LATENT)), "latents"),
    ]:
        with pytest.raises(ValueError, match=match):
            pipe(num_inference_steps=1, **kwargs)
    no_stats = RAEDiTPipeline(transformer=pipe.transformer, vae=tiny_rae(seed=0))
    with pytest.raises(ValueError, match="compute_latent_stats"):
        no_stats([0], num_inference_steps=1, output_type="pt")
    assert no_stats([0], num_inference_steps=1, output_type="latent").images.shape == (1, *LATENT)
    with pytest.raises(ValueError, match="latents"):
        RAEDiTPipeline(transformer=tiny_dit(), vae=tiny_rae(seed=0, decoder_patch_size=4, encoder_input_size=16))


def test_save_and_load_round_trip(tmp_path):
    pipe = make_pipe(5)
    kwargs = dict(num_inference_steps=4, guidance="cfg", guidance_scale=2.0, output_type="pt")
    expected = pipe([0, 4], generator=torch.Generator().manual_seed(9), **kwargs).images
    pipe.save_pretrained(tmp_path / "pipe")
    loaders = [
        lambda path: RAEDiTPipeline.from_pretrained(path),
        lambda path: rae_hf.RAEDiTPipeline.from_pretrained(path),
        lambda path: DiffusionPipeline.from_pretrained(
            path, custom_pipeline="pipeline_rae_dit", trust_remote_code=True
        ),
    ]
    for load in loaders:
        loaded = load(tmp_path / "pipe")
        assert type(loaded).__name__ == "RAEDiTPipeline" and loaded.vae.config.normalize_latents
        loaded.set_progress_bar_config(disable=True)
        assert torch.equal(loaded([0, 4], generator=torch.Generator().manual_seed(9), **kwargs).images, expected)


def test_class_balanced_sample_fn_and_guidance_sweep(tmp_path):
    pipe = make_pipe(6)
    calls = record_inputs(pipe.transformer)
    sample_fn = make_sample_fn(pipe, num_inference_steps=2, guidance="cfg", guidance_scale=2.0, seed=3)
    images = sample_fn(4, torch.tensor([0, 1, 2, 3]))
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32 and 0 <= images.min() <= images.max() <= 1
    again = make_sample_fn(pipe, num_inference_steps=2, guidance="cfg", guidance_scale=2.0, seed=3)(4, calls[0][2][:4])
    assert torch.equal(images, again)  # seeded
    bf16 = make_sample_fn(pipe, num_inference_steps=2, guidance="cfg", guidance_scale=2.0, seed=3,
                          autocast_dtype=torch.bfloat16)(4, torch.tensor([0, 1, 2, 3]))  # fmt: skip
    assert bf16.dtype == torch.float32 and 0 < (bf16 - images).abs().max() < 0.1  # autocast ran, close to fp32
    calls.clear()
    rows = guidance_sweep(pipe, [1.0, 2.0], num_samples=10, batch_size=4, num_inference_steps=2,
                          feature=TinyInception(), inception_score_splits=2, save_dir=tmp_path)  # fmt: skip
    assert [row["guidance_scale"] for row in rows] == [1.0, 2.0] and all(row["num_samples"] == 10 for row in rows)
    assert rows[0]["inception_score"] != rows[1]["inception_score"]
    first_labels = [calls[i][2] for i in (0, 2, 4)]  # unguided batches of 4, 4, 2 samples, 2 steps each
    assert torch.cat(first_labels).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]  # class-balanced: 2 per class
    with np.load(tmp_path / "guidance_2" / "samples_rank0.npz") as saved:
        assert saved["arr_0"].shape == (10, 32, 32, 3) and saved["arr_1"].tolist() == torch.cat(first_labels).tolist()
