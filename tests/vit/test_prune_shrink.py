"""Physical shrinking: equal logits, fewer parameters, folded constants, from_pretrained, the CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForImageClassification
from vit_helpers import tiny_batch, tiny_classifier

from rae_hf.models.vit import ViTVariantForImageClassification
from rae_hf.prune import (
    MaskSet,
    count_parameters,
    dense_masks,
    global_magnitude_masks,
    pruning_stats,
    refill_masks,
    shrink_model,
    unit_groups,
    vit_flops,
)
from rae_hf.prune.__main__ import shrink_checkpoint


def refilled_model(seed: int = 0, rate: float = 0.5, criterion: str = "magnitude"):
    model = tiny_classifier(seed)
    params = dict(model.named_parameters())
    groups = unit_groups(model)
    magnitude = global_magnitude_masks(params, dense_masks(model, [m.name for g in groups for m in g.weights]), rate)
    refilled, kept = refill_masks(model, groups, magnitude, 0.0, criterion, tiny_batch())
    refilled.apply(model)
    return model, kept


def test_shrunk_logits_equal_masked_and_fewer_parameters():
    model, kept = refilled_model()
    small = shrink_model(model)
    assert small.config.num_attention_heads == [kept["vit.blocks.0.attn"], kept["vit.blocks.1.attn"]]
    assert small.config.intermediate_size == [kept["vit.blocks.0.mlp"], kept["vit.blocks.1.mlp"]]
    assert count_parameters(small) < count_parameters(model)
    assert count_parameters(small) == count_parameters(model, nonzero=True)
    pixels = tiny_batch(16, seed=3)["pixel_values"]
    with torch.no_grad():
        assert (small(pixels).logits - model(pixels).logits).abs().max() <= 1e-5
    assert vit_flops(small.config) < vit_flops(model.config)


def test_constants_of_removed_units_are_folded_into_the_next_bias():
    """Units with zero input weights but nonzero biases output constants: shrinking must keep their effect."""
    model = tiny_classifier(1)
    with torch.no_grad():
        attn, mlp = model.vit.blocks[0].attn, model.vit.blocks[1].mlp
        attn.qkv.weight.view(3, 4, 8, -1)[:, 2] = 0  # head 2: q, k, v rows zero, v bias kept (nonzero)
        mlp.fc1.weight[[0, 5, 9]] = 0  # channels with zero rows, biases kept: constant gelu(b)
        model.vit.blocks[1].attn.proj.weight[:, 8:16] = 0  # head 1 of block 1: proj columns zero
    small = shrink_model(model)
    assert small.config.num_attention_heads == [3, 3] and small.config.intermediate_size == [48, 45]
    pixels = tiny_batch(8, seed=4)["pixel_values"]
    with torch.no_grad():
        assert (small(pixels).logits - model(pixels).logits).abs().max() <= 1e-5


def test_fully_pruned_branches_become_bias_only():
    model = tiny_classifier(2)
    with torch.no_grad():
        model.vit.blocks[0].attn.proj.weight.zero_()
        model.vit.blocks[0].mlp.fc2.weight.zero_()
    small = shrink_model(model)
    assert small.config.num_attention_heads == [0, 4] and small.config.intermediate_size == [0, 48]
    assert small.vit.blocks[0].attn.qkv.weight.numel() == 0 and small.vit.blocks[0].mlp.fc2.weight.numel() == 0
    pixels = tiny_batch(4, seed=5)["pixel_values"]
    with torch.no_grad():
        assert (small(pixels).logits - model(pixels).logits).abs().max() <= 1e-5


def test_unstructured_masks_remove_only_empty_units():
    model = tiny_classifier()
    params = dict(model.named_parameters())
    masks = global_magnitude_masks(params, dense_masks(model, ["vit.blocks.0.mlp.fc1.weight"]), 0.3)
    MaskSet(masks.masks).apply(model)
    assert shrink_model(model).config.intermediate_size == [48, 48]


def test_stats_of_a_refilled_model():
    model, kept = refilled_model(rate=0.5)
    stats = pruning_stats(model)
    assert 0.4 < stats["weight_sparsity"] < 0.6
    heads_removed = 8 - kept["vit.blocks.0.attn"] - kept["vit.blocks.1.attn"]
    assert stats["head_sparsity"] == heads_removed / 8
    assert stats["params_shrunk"] == count_parameters(shrink_model(model))
    assert stats["gflops_shrunk"] < stats["gflops_dense"]


def test_shrink_checkpoint_and_from_pretrained(tmp_path):
    model, _ = refilled_model(criterion="l1")
    model.save_pretrained(tmp_path / "masked")
    result = shrink_checkpoint(str(tmp_path / "masked"), str(tmp_path / "small"))
    assert result["params_after"] < result["params_before"]
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path / "small").eval()
    assert isinstance(loaded, ViTVariantForImageClassification)
    pixels = tiny_batch(4, seed=6)["pixel_values"]
    with torch.no_grad():
        assert (loaded(pixels).logits - model(pixels).logits).abs().max() <= 1e-5


@pytest.mark.slow
def test_shrink_command_line(tmp_path):
    model, _ = refilled_model()
    model.save_pretrained(tmp_path / "masked")
    completed = subprocess.run(
        [sys.executable, "-m", "rae_hf.prune", "shrink", str(tmp_path / "masked"), str(tmp_path / "small2")],
        capture_output=True, text=True, timeout=300, env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                                                           "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "params" in completed.stdout and (tmp_path / "small2" / "model.safetensors").is_file()
