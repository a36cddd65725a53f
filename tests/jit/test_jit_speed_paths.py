"""The JiT speed paths change no number: RoPE tables cached per resolution, and `compile_blocks()` (torch.compile of
each block) equal to eager in the forward and the gradients."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import SyntheticImages
from jit_helpers import tiny_model

from rae_hf.data import ImageCollator
from rae_hf.models.jit.modeling_jit import rope_tables_2d
from rae_hf.trainers.jit_config import JiTTrainingArguments
from rae_hf.trainers.jit_trainer import JiTTrainer


def _inputs(model, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    size = model.config.image_size
    x = torch.randn(2, 3, size, size, generator=generator)
    return x, torch.rand(2, generator=generator), torch.tensor([0, 3])


def test_rope_tables_are_built_once_per_resolution_and_equal_the_formula():
    model = tiny_model()
    cos, sin, cos_ctx, sin_ctx = model.rope(torch.device("cpu"))
    assert model.rope(torch.device("cpu"))[0] is cos  # cached, not rebuilt
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    expected_cos, expected_sin = rope_tables_2d(head_dim, model.config.grid_size, model.config.rope_theta)
    assert torch.equal(cos, expected_cos) and torch.equal(sin, expected_sin)
    n_ctx = model.config.num_in_context_tokens
    assert torch.equal(cos_ctx[:n_ctx], torch.ones(n_ctx, head_dim)) and torch.equal(cos_ctx[n_ctx:], cos)
    assert torch.equal(sin_ctx[:n_ctx], torch.zeros(n_ctx, head_dim)) and torch.equal(sin_ctx[n_ctx:], sin)
    assert not any("rope" in name for name in model.state_dict())  # no buffers: official checkpoint layout


def test_cached_rope_tables_built_under_inference_mode_still_train():
    model = tiny_model()
    x, t, labels = _inputs(model)
    with torch.inference_mode():
        model(x, t, labels)  # first call builds the cache while sampling
    model.train()
    model(x, t, labels).prediction.square().mean().backward()
    assert all(p.grad is not None for p in model.blocks.parameters())


def test_cached_tables_give_the_same_output_as_fresh_ones():
    model = tiny_model()
    x, t, labels = _inputs(model)
    with torch.no_grad():
        first = model(x, t, labels).prediction
        model._rope_cache.clear()
        second = model(x, t, labels).prediction
    assert torch.equal(first, second)


@pytest.mark.slow
def test_compiled_blocks_equal_eager_forward_and_gradients():
    eager = tiny_model(num_hidden_layers=2).train()
    compiled = copy.deepcopy(eager)
    compiled.compile_blocks()
    assert list(compiled.state_dict()) == list(eager.state_dict())  # names unchanged
    x, t, labels = _inputs(eager)
    losses = []
    for model in (eager, compiled):
        loss = model(x, t, labels).prediction.square().mean()
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[1], losses[0], atol=1e-6, rtol=1e-5)
    for (name, p_eager), p_compiled in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        if p_eager.grad is not None:
            torch.testing.assert_close(p_compiled.grad, p_eager.grad, atol=1e-6, rtol=1e-4, msg=name)


def test_trainer_compile_blocks_flag_compiles_each_block(tmp_path):
    model = tiny_model()
    assert all(block._compiled_call_impl is None for block in model.blocks)
    args = JiTTrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, compile_blocks=True,
                                num_grid_samples=0, log_csv=False, ema_decay=0.0, ema_decay2=0.0)  # fmt: skip
    JiTTrainer(model=model, args=args, train_dataset=SyntheticImages(count=4, size=16), data_collator=ImageCollator())
    assert all(block._compiled_call_impl is not None for block in model.blocks)
