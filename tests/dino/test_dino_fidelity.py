"""The DINOv2 code's forms (position-embedding interpolation offset, batch-subset stochastic depth, fresh init,
KoLeo eps) against hand computations, and transformers' forms kept as options."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from dino_toys import tiny_dino
from transformers.models.dinov2.modeling_dinov2 import Dinov2DropPath, Dinov2Layer

from rae_hf.losses.dino import koleo_loss
from rae_hf.models.dino import DinoConfig
from rae_hf.models.dino.official_vit_layers import BatchSubsetDinov2Layer, OffsetDinov2Embeddings


def _cubic(t: float, a: float = -0.75) -> list[float]:
    """Keys' cubic-convolution weights of the 4 taps at offsets -1, 0, 1, 2 for a fraction `t` (PyTorch's a)."""

    def near(x: float) -> float:  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x: float) -> float:  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def _hand_resize(grid: torch.Tensor, out: int, scale: float) -> torch.Tensor:
    """Separable bicubic of `[M, M, D]` to `[out, out, D]`: output i samples source `(i + 0.5) / scale - 0.5`,
    taps clamped at the border (align_corners=False)."""
    side = grid.shape[0]
    matrix = torch.zeros(out, side, dtype=torch.float64)
    for i in range(out):
        source = (i + 0.5) / scale - 0.5
        base = math.floor(source)
        for tap, weight in zip(range(base - 1, base + 3), _cubic(source - base), strict=True):
            matrix[i, min(max(tap, 0), side - 1)] += weight
    return torch.einsum("ik,jl,kld->ijd", matrix, matrix, grid.double()).float()


def test_offset_interpolation_equals_hand_bicubic_and_exact_size_stays_an_option():
    model = tiny_dino()  # 32 px, patch 4: M = 8; local crops of 16 px: grid 4
    embeddings = model.student["backbone"].embeddings
    assert isinstance(embeddings, OffsetDinov2Embeddings) and model.config.interpolate_offset == 0.1
    table = embeddings.position_embeddings.detach()
    grid = table[0, 1:].reshape(8, 8, -1)
    tokens = torch.zeros(1, 17, table.shape[-1])
    official = embeddings.interpolate_pos_encoding(tokens, 16, 16).detach()
    expected = _hand_resize(grid, 4, 4.1 / 8).reshape(16, -1)
    torch.testing.assert_close(official[0, 1:], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(official[0, 0], table[0, 0])
    assert torch.equal(embeddings.interpolate_pos_encoding(torch.zeros(1, 65, 32), 32, 32), table)  # own size

    exact = tiny_dino(interpolate_offset=None).student["backbone"].embeddings
    assert not isinstance(exact, OffsetDinov2Embeddings)
    exact_grid = exact.interpolate_pos_encoding(tokens, 16, 16).detach()[0, 1:]
    exact_table = exact.position_embeddings.detach()[0, 1:].reshape(8, 8, -1)
    torch.testing.assert_close(exact_grid, _hand_resize(exact_table, 4, 4 / 8).reshape(16, -1), atol=1e-5, rtol=0)
    assert (official[0, 1:] - _hand_resize(grid, 4, 4 / 8).reshape(16, -1)).abs().max() > 1e-3  # they differ


def _layer(mode: str) -> Dinov2Layer:
    model = tiny_dino(drop_path_mode=mode, backbone_config=_backbone(drop_path_rate=0.5))
    layer = model.student["backbone"].encoder.layer[0]
    with torch.no_grad():  # LayerScale 1 so that the branches are not negligible
        layer.layer_scale1.lambda1.fill_(1.0)
        layer.layer_scale2.lambda1.fill_(1.0)
    return layer.train()


def _backbone(**overrides) -> dict:
    values = dict(model_type="dinov2", hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
    values.update(intermediate_size=64, patch_size=4, image_size=32, layerscale_value=1e-5)
    return values | overrides


def test_batch_subset_drop_path_equals_hand_computation_on_the_subset_only():
    layer = _layer("batch_subset")
    assert isinstance(layer, BatchSubsetDinov2Layer)
    x = torch.randn(8, 5, 32)
    batch_sizes = []
    layer.attention.register_forward_hook(lambda module, args, out: batch_sizes.append(args[0].shape[0]))
    torch.manual_seed(3)
    out = layer(x)
    assert batch_sizes == [4]  # int(8 * (1 - 0.5)) samples through the branch, not 8

    torch.manual_seed(3)  # the same permutations, by hand
    with torch.no_grad():
        first = torch.randperm(8)[:4]
        mid = x.clone()
        mid[first] += 2.0 * layer.layer_scale1(layer.attention(layer.norm1(x[first]))[0])
        second = torch.randperm(8)[:4]
        expected = mid.clone()
        expected[second] += 2.0 * layer.layer_scale2(layer.mlp(layer.norm2(mid[second])))
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    untouched = [i for i in range(8) if i not in first.tolist() + second.tolist()]
    assert all(torch.equal(out[i], x[i]) for i in untouched)

    layer.eval()  # no drop path outside training: the plain layer
    torch.testing.assert_close(layer(x), Dinov2Layer.forward(layer, x), atol=0, rtol=0)


def test_per_sample_drop_path_stays_an_option():
    layer = _layer("per_sample")
    assert type(layer) is Dinov2Layer and isinstance(layer.drop_path, Dinov2DropPath)
    x = torch.randn(64, 5, 32)
    with torch.no_grad():
        out = layer(x)
        full = Dinov2Layer.forward(layer.eval(), x)
    # each sample keeps both branches (x 2) or skips a branch: never equal to the plain layer for all samples
    assert not torch.allclose(out, full)


def test_batch_subset_drop_path_trains_with_the_model():
    model = tiny_dino()
    model.train()
    out = model(torch.randn(4, 3, 32, 32), torch.randn(8, 3, 16, 16))
    (out.student_global_logits.sum() + out.student_local_logits.sum()).backward()
    grads = [p.grad for p in model.student["backbone"].parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_fresh_backbone_init_statistics():
    config = _backbone(hidden_size=384, num_attention_heads=6, intermediate_size=768, num_hidden_layers=1)
    official = tiny_dino(backbone_config=config).student["backbone"].embeddings
    fan_in = 3 * 4 * 4
    bound = 1 / math.sqrt(fan_in)  # kaiming-uniform(a=sqrt(5)): U(+-1/sqrt(fan_in)), std bound/sqrt(3)
    cls_std = official.cls_token.std().item()
    assert 0.8e-6 < cls_std < 1.2e-6
    weight = official.patch_embeddings.projection.weight
    assert weight.abs().max() <= bound and abs(weight.std().item() - bound / math.sqrt(3)) < 0.05 * bound
    bias = official.patch_embeddings.projection.bias
    assert bias.abs().max() <= bound and bias.std().item() > 0.4 * bound

    hf = tiny_dino(backbone_config=config, backbone_init="backbone").student["backbone"].embeddings
    assert abs(hf.cls_token.std().item() - 0.02) < 0.003  # trunc-normal 0.02 (cut at +-2: no cut in effect)
    assert abs(hf.patch_embeddings.projection.weight.std().item() - 0.02) < 0.002
    assert torch.count_nonzero(hf.patch_embeddings.projection.bias) == 0

    registers = tiny_dino(backbone_config=_backbone(model_type="dinov2_with_registers", num_register_tokens=64))
    tokens = registers.student["backbone"].embeddings.register_tokens
    assert 0.8e-6 < tokens.std().item() < 1.2e-6
    teacher = registers.teacher["backbone"].embeddings.register_tokens
    assert torch.equal(tokens, teacher)


def test_koleo_on_duplicated_rows_equals_hand_computation():
    torch.manual_seed(0)
    a, b = torch.randn(1, 8), torch.randn(1, 8)
    rows = torch.cat([a, a, b]).requires_grad_()
    loss = koleo_loss(rows)
    eps = 1e-8
    ua, ub = F.normalize(a, dim=-1)[0], F.normalize(b, dim=-1)[0]
    d_dup = eps * math.sqrt(8)  # ||x - x + eps||, eps inside the norm as the DINOv2 code
    d_b = torch.linalg.vector_norm(ub - ua + eps).item()
    expected = -(2 * math.log(d_dup + eps) + math.log(d_b + eps)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert torch.isfinite(rows.grad).all()


def test_config_rejects_unknown_forms():
    with pytest.raises(ValueError, match="drop_path_mode"):
        DinoConfig(drop_path_mode="row")
    with pytest.raises(ValueError, match="backbone_init"):
        DinoConfig(backbone_init="timm")
    with pytest.raises(ValueError, match="interpolate_offset"):
        DinoConfig(interpolate_offset=1.5)


def test_batch_subset_drop_path_recomputes_the_same_subsets_under_activation_checkpointing():
    model = tiny_dino(backbone_config=_backbone(drop_path_rate=0.5, layerscale_value=1.0)).train()
    gradients = []
    for checkpointing in (True, False):
        if checkpointing:
            model.activation_checkpointing_enable()
        else:
            model.activation_checkpointing_disable()
        model.zero_grad()
        torch.manual_seed(0)
        out = model(torch.randn(4, 3, 32, 32), torch.randn(8, 3, 16, 16))
        (out.student_global_logits.sum() + out.student_local_logits.sum()).backward()
        gradients.append([p.grad.clone() for p in model.student["backbone"].parameters() if p.grad is not None])
    assert len(gradients[0]) == len(gradients[1]) > 0
    for with_checkpoints, without in zip(*gradients, strict=True):
        torch.testing.assert_close(with_checkpoints, without, atol=1e-6, rtol=1e-5)
