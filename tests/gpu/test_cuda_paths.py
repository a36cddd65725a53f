"""The CUDA paths no CPU run executes: bf16 autocast in every trainer, torch.compile, fused AdamW, no host sync in a
training step, TF32 and SDPA. Marked `gpu` and skipped without CUDA (`pytest -m gpu`). `benchmarks/gpu_suite.py` runs
`-m "gpu and not slow"` first (tiny models, under a minute); the compile tests are also `slow` (minutes)."""

from __future__ import annotations

import functools

import pytest
import torch
from trainer_toys import METHODS, logged_losses, make_trainer

from rae_hf.trainers.base_config import BaseTrainingArguments

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture
def exact_fp32():
    """fp32 matmuls without TF32 (for comparisons at fp32 tolerances); the previous setting is restored."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(previous)


@pytest.mark.parametrize("method", METHODS)
def test_bf16_loss_agrees_with_fp32(method, tmp_path):
    """Three optimizer steps from the same weights and data: bf16 autocast's losses stay within 5% of fp32's (TF32
    matmuls, as the trainers run fp32 on CUDA)."""
    fp32 = make_trainer(method, tmp_path / "fp32", device="cuda")
    fp32.train()
    bf16 = make_trainer(method, tmp_path / "bf16", device="cuda", bf16=True)
    bf16.train()
    reference, mixed = logged_losses(fp32), logged_losses(bf16)
    assert len(reference) == len(mixed) == 3
    assert mixed == pytest.approx(reference, rel=5e-2), (reference, mixed)


@pytest.mark.slow  # compiles 6 trainers (minutes): the suite's compiled runs cover RAE (GAN step), JiT, DINO, DiT
@pytest.mark.parametrize("method", METHODS)
def test_torch_compile_trains(method, tmp_path):
    """`--torch_compile true` works for every trainer (the RAE GAN step included): finite losses, every step done."""
    trainer = make_trainer(method, tmp_path, device="cuda", torch_compile=True, bf16=True)
    trainer.train()
    losses = logged_losses(trainer)
    assert trainer.state.global_step == 3 and len(losses) == 3
    assert all(torch.isfinite(torch.tensor(losses))), losses


@pytest.mark.slow
@pytest.mark.parametrize("method", ["rae", "jit", "dit", "prune"])
def test_compiled_forward_equals_eager(method, tmp_path, exact_fp32):
    """The compiled model's eval-mode outputs equal eager's (fp32, no TF32)."""
    model = make_trainer(method, tmp_path).model.to("cuda").eval()
    torch.manual_seed(0)
    if method == "rae":
        inputs, read = (torch.rand(2, 3, 32, 32, device="cuda"),), lambda out: out.reconstruction
    elif method == "jit":
        images = torch.rand(2, 3, 16, 16, device="cuda")
        inputs = (images, torch.rand(2, device="cuda"), torch.tensor([0, 1], device="cuda"))
        read = lambda out: out.prediction  # noqa: E731
    elif method == "dit":
        latents = torch.randn(2, 8, 4, 4, device="cuda")
        inputs = (latents, torch.rand(2, device="cuda"), torch.tensor([0, 1], device="cuda"))
        read = lambda out: out.prediction  # noqa: E731
    else:
        inputs, read = (torch.rand(2, 3, 16, 16, device="cuda"),), lambda out: out.logits
    with torch.no_grad():
        eager = read(model(*inputs))
        compiled = read(torch.compile(model)(*inputs))
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)


def test_fused_adamw_matches_foreach():
    """Fused AdamW (our default on CUDA) takes the same steps as the multi-tensor implementation."""
    torch.manual_seed(0)
    params = [torch.randn(64, 32, device="cuda"), torch.randn(32, device="cuda")]
    copies = {name: [p.clone().requires_grad_(True) for p in params] for name in ("fused", "foreach")}
    optimizers = {
        name: torch.optim.AdamW(copy, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.05, **{name: True})
        for name, copy in copies.items()
    }
    for _ in range(5):
        grads = [torch.randn_like(p) for p in params]
        for name, optimizer in optimizers.items():
            for param, grad in zip(copies[name], grads, strict=True):
                param.grad = grad.clone()
            optimizer.step()
    for fused, foreach in zip(copies["fused"], copies["foreach"], strict=True):
        torch.testing.assert_close(fused, foreach, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_training_step_has_no_host_sync(method, tmp_path):
    """After a first step (lazy initializations), `training_step`, the RAE discriminator step and the per-step
    bookkeeping (`_maybe_log_save_evaluate`, no log due) run under `torch.cuda.set_sync_debug_mode("error")`: any
    synchronizing call (`.item()`, a blocking host-to-device copy, boolean indexing...) raises."""
    trainer = make_trainer(method, tmp_path, device="cuda", bf16=True, logging_steps=100)  # no log in 3 steps

    def strict(method_):
        @functools.wraps(method_)
        def run(*args, **kwargs):
            if trainer.state.global_step == 0:
                return method_(*args, **kwargs)
            torch.cuda.set_sync_debug_mode("error")
            try:
                return method_(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode("default")

        return run

    for name in ("training_step", "_discriminator_steps", "_maybe_log_save_evaluate"):
        if hasattr(trainer, name):
            setattr(trainer, name, strict(getattr(trainer, name)))
    trainer.train()
    assert trainer.state.global_step == 3


def test_cuda_defaults_tf32_fused_and_sdpa(tmp_path):
    """Training arguments on CUDA turn TF32 on (matmuls and cuDNN), keep pinned memory with non-blocking copies and
    fused AdamW; every model attends through SDPA."""
    args = BaseTrainingArguments(output_dir=str(tmp_path), dataloader_num_workers=2)
    assert args.tf32 is True and args.optim == "adamw_torch_fused"
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert args.dataloader_pin_memory and args.dataloader_persistent_workers and args.accelerator_config.non_blocking
    for method in METHODS:
        model = make_trainer(method, tmp_path / method, device="cuda").model
        implementations = {
            module.config._attn_implementation
            for module in model.modules()
            if hasattr(module, "config") and getattr(module.config, "_attn_implementation", None)
        }
        assert implementations <= {"sdpa"}, (method, implementations)
