"""Global magnitude pruning, Refill (all criteria), the RSST penalty, rewinding and mask enforcement."""

from __future__ import annotations

import math

import pytest
import torch
from vit_helpers import tiny_batch, tiny_classifier

from rae_hf.prune import (
    MaskSet,
    RefillCallback,
    RoundMasks,
    RSSTCallback,
    capture_state,
    dense_masks,
    global_magnitude_masks,
    refill_keep_count,
    refill_masks,
    rewind,
    rsst_lambda,
    unit_groups,
)
from rae_hf.prune.refill import activation_scores
from rae_hf.prune.structure import per_unit_sum


def weight_masks(model) -> MaskSet:
    return dense_masks(model, [m.name for g in unit_groups(model) for m in g.weights])


def test_targets_and_unit_groups():
    model = tiny_classifier()
    groups = unit_groups(model)
    assert [(g.name, g.kind, g.num_units) for g in groups] == [
        ("vit.blocks.0.attn", "heads", 4), ("vit.blocks.0.mlp", "mlp", 48),
        ("vit.blocks.1.attn", "heads", 4), ("vit.blocks.1.mlp", "mlp", 48),
    ]  # fmt: skip
    params = dict(model.named_parameters())
    assert groups[0].unit_sizes(params) == 3 * 8 * 32 + 32 * 8  # q/k/v rows + proj columns of one head
    assert groups[1].unit_sizes(params) == 32 + 32  # fc1 row + fc2 column
    # a head's unit view picks exactly rows s*H*d + h*d .. + d - 1 of qkv (s = q, k, v) and columns h*d.. of proj
    qkv = groups[0].weights[0].view(params["vit.blocks.0.attn.qkv.weight"])
    assert torch.equal(qkv[2, 1], params["vit.blocks.0.attn.qkv.weight"][32 + 16 : 32 + 24])
    only_fc = unit_groups(model, ("mlp.fc1",))
    assert [g.kind for g in only_fc] == ["mlp", "mlp"] and len(only_fc[0].weights) == 1
    with pytest.raises(ValueError, match="prune targets"):
        unit_groups(model, ("nothing",))


@pytest.mark.parametrize("rate", [0.2, 0.5, 0.37])
def test_magnitude_removes_exact_global_fraction_within_the_mask(rate):
    model = tiny_classifier()
    params = dict(model.named_parameters())
    with torch.no_grad():  # ties: many equal magnitudes must still give the exact count
        params["vit.blocks.0.mlp.fc1.weight"][:10] = 0.5
    current = weight_masks(model)
    total = sum(m.numel() for _, m in current.items())
    first = global_magnitude_masks(params, current, rate)
    kept = sum(int(m.sum()) for _, m in first.items())
    assert kept == total - round(rate * total)
    second = global_magnitude_masks(params, first, rate)
    kept2 = sum(int(m.sum()) for _, m in second.items())
    assert kept2 == kept - round(rate * kept)
    for name, mask in second.items():  # nested, and the smallest magnitudes went first (one global threshold)
        assert not (mask & ~first[name]).any()
    removed = torch.cat([params[n].abs()[~m].flatten() for n, m in first.items()])
    survived = torch.cat([params[n].abs()[m].flatten() for n, m in first.items()])
    assert removed.max() <= survived.min()


def test_refill_keep_count_formula():
    assert refill_keep_count(ones=26.0 * 64, entries_per_unit=64, num_units=48, fillback_rate=0.0) == 26
    assert refill_keep_count(ones=26.5 * 64, entries_per_unit=64, num_units=48, fillback_rate=0.2) == int(
        26.5 + (48 - 26.5) * 0.2
    )


@pytest.mark.parametrize("criterion", ["remain", "magnitude", "l1", "l2", "saliency"])
@pytest.mark.parametrize("fillback", [0.0, 0.3])
def test_refill_keeps_exactly_the_computed_channels(criterion, fillback):
    model = tiny_classifier()
    params = dict(model.named_parameters())
    groups = unit_groups(model)
    magnitude = global_magnitude_masks(params, weight_masks(model), 0.45)
    refilled, kept = refill_masks(model, groups, magnitude, fillback, criterion, tiny_batch())
    for group in groups:
        ones = float(per_unit_sum(group, {n: magnitude[n] for n in magnitude.masks}).sum())
        expected = refill_keep_count(ones, group.unit_sizes(params), group.num_units, fillback)
        assert kept[group.name] == expected
        per_unit = per_unit_sum(group, {n: refilled[n] for n in refilled.masks})
        size = group.unit_sizes(params)
        assert int((per_unit == size).sum()) == expected and int((per_unit == 0).sum()) == group.num_units - expected
        for bias in group.biases:  # unit biases follow their unit
            assert torch.equal(bias.view(refilled[bias.name]).reshape(group.num_units, -1).all(1), per_unit == size)


def test_refill_criteria_rank_what_they_say():
    model = tiny_classifier()
    params = dict(model.named_parameters())
    groups = [g for g in unit_groups(model) if g.name == "vit.blocks.0.mlp"]
    with torch.no_grad():  # channel 7: the largest fc1/fc2 weights and (so) the largest activation
        params["vit.blocks.0.mlp.fc1.weight"][7] *= 50
        params["vit.blocks.0.mlp.fc2.weight"][:, 7] *= 50
    magnitude = MaskSet({m.name: torch.ones_like(params[m.name], dtype=torch.bool) for m in groups[0].weights})
    magnitude.masks["vit.blocks.0.mlp.fc1.weight"][8:] = False  # 8 surviving rows (0..7) -> keep 8 (+ fc2 columns)
    magnitude.masks["vit.blocks.0.mlp.fc2.weight"][:, 8:] = False
    for criterion in ("remain", "magnitude", "l1", "l2"):
        refilled, kept = refill_masks(model, groups, magnitude, 0.0, criterion, tiny_batch())
        rows = refilled["vit.blocks.0.mlp.fc1.weight"].all(1)
        assert kept["vit.blocks.0.mlp"] == 8 and rows[7], criterion
        if criterion == "remain":
            assert rows[:8].all()


def test_activation_scores_match_a_hand_computation():
    """l1 / l2 / saliency of MLP channels (fc2 input) and heads (proj input, split per head) on one batch."""
    model = tiny_classifier(std=0.05)
    batch = tiny_batch()
    captured = {}
    model.vit.blocks[1].mlp.fc2.register_forward_pre_hook(lambda m, a: captured.__setitem__("mlp", a[0]))
    model.vit.blocks[0].attn.proj.register_forward_pre_hook(lambda m, a: captured.__setitem__("attn", a[0]))
    out = model(**batch)
    for value in captured.values():
        value.retain_grad()
    out.loss.backward()
    mlp, attn = captured["mlp"], captured["attn"]
    hand = {
        "l1": (mlp.abs().sum((0, 1)), attn.abs().unflatten(-1, (4, 8)).sum((0, 1, 3))),
        "l2": (mlp.square().sum((0, 1)), attn.square().unflatten(-1, (4, 8)).sum((0, 1, 3))),
        "saliency": ((mlp * mlp.grad).abs().sum((0, 1)), (attn * attn.grad).abs().unflatten(-1, (4, 8)).sum((0, 1, 3))),
    }
    model.zero_grad()
    groups = unit_groups(model)
    for criterion, (mlp_ref, attn_ref) in hand.items():
        scores = activation_scores(model, groups, batch, criterion)
        torch.testing.assert_close(scores["vit.blocks.1.mlp"].float(), mlp_ref.detach(), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(scores["vit.blocks.0.attn"].float(), attn_ref.detach(), rtol=1e-4, atol=1e-6)


def test_rsst_lambda_formula():
    g, k, j = 1.0, 4.0, 352
    for i in (0, 100, 351):
        expected = g / (math.e - 1) * (math.exp(((i + 1) / j) ** k) - 1)
        assert rsst_lambda("exp_custom_exponents", g, k, i, j) == pytest.approx(expected, rel=1e-12)
    assert rsst_lambda("exp_custom_exponents", g, k, j - 1, j) == pytest.approx(g)  # reaches g at the epoch end
    assert rsst_lambda("exp_custom_exponents", g, k, j, j) == rsst_lambda("exp_custom_exponents", g, k, 0, j)
    assert rsst_lambda("exp_custom_exponents", 1.0, 4.0, 5, 352) > 1e-10  # the seed stayed at ~3.8e-11 all round
    assert rsst_lambda("exp_custom", 2.0, 9.0, 9, 20) == pytest.approx(2.0 / (math.e - 1) * (math.exp(0.5) - 1))
    assert rsst_lambda("x", 0.1, 0, 4, 10) == pytest.approx(0.5)
    assert rsst_lambda("x^2", 0.1, 0, 4, 10) == pytest.approx(0.25)
    assert rsst_lambda("x^3", 0.1, 0, 4, 10) == pytest.approx(0.125)
    assert rsst_lambda("exp", 0.1, 0, 4, 10) == pytest.approx(math.exp(0.5))
    with pytest.raises(ValueError, match="reg curve"):
        rsst_lambda("cubic", 1, 1, 0, 1)


class _State:
    def __init__(self, step: int):
        self.global_step = step


def _rsst_masks(model) -> RoundMasks:
    params = dict(model.named_parameters())
    magnitude = global_magnitude_masks(params, weight_masks(model), 0.3)
    refilled, _ = refill_masks(model, unit_groups(model), magnitude, 0.0, "remain")
    weights_r = MaskSet({n: m for n, m in refilled.items() if n in magnitude})
    return RoundMasks(
        train=magnitude.union(weights_r), penalty=magnitude.minus(weights_r), hard=refilled, magnitude=magnitude
    )


def test_rsst_penalty_drives_only_the_penalized_weights_to_zero():
    """Toy: the task gradient is zero, so only the penalty acts: M & ~R decays, everything else stays put."""
    model = tiny_classifier()
    masks = _rsst_masks(model)
    callback = RSSTCallback(masks, reg_curve="x", reg_granularity=0.05)
    callback.masks.train.apply(model)
    start = capture_state(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)

    def penalized() -> float:
        return sum(float((p.detach() * masks.penalty[n]).abs().sum()) for n, p in model.named_parameters()
                   if n in masks.penalty)  # fmt: skip

    penalized_norm = [penalized()]
    for step in range(20):
        optimizer.zero_grad()
        (0.0 * model(**tiny_batch()).logits.sum()).backward()
        callback.on_pre_optimizer_step(None, _State(step), None, model=model)
        optimizer.step()
        callback.on_optimizer_step(None, _State(step), None, model=model)
        penalized_norm.append(penalized())
    # w <- w (1 - lr lambda_n), lambda_n = 0.05 n: prod_{n<=20} (1 - 0.025 n) ~ 1.6e-3
    expected = math.prod(1 - 0.5 * 0.05 * n for n in range(1, 21))
    assert penalized_norm[-1] == pytest.approx(expected * penalized_norm[0], rel=1e-3)
    assert callback.current_lambda == pytest.approx(0.05 * 20)
    for name, param in model.named_parameters():
        outside = ~masks.penalty[name] if name in masks.penalty else torch.ones_like(param, dtype=torch.bool)
        assert torch.equal(param[outside], start[name][outside]), name
        if name in masks.train:  # pruned entries stay exactly zero
            assert not param[~masks.train[name]].any()


def test_rsst_penalty_shrinks_penalized_weights_while_training():
    """With a real loss, the penalized set shrinks far more than without the penalty; R weights keep training."""
    results = []
    for granularity in (0.0, 2.0):
        model = tiny_classifier(std=0.05)
        masks = _rsst_masks(model)
        callback = RSSTCallback(masks, reg_curve="x", reg_granularity=granularity)
        callback.masks.train.apply(model)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        for step in range(15):
            optimizer.zero_grad()
            model(**tiny_batch()).loss.backward()
            callback.on_pre_optimizer_step(None, _State(step), None, model=model)
            optimizer.step()
            callback.on_optimizer_step(None, _State(step), None, model=model)
        results.append(sum(float((p.detach() * masks.penalty[n]).abs().sum()) for n, p in model.named_parameters()
                           if n in masks.penalty))  # fmt: skip
    assert results[1] < 0.1 * results[0]


def test_rewind_restores_init_values_of_surviving_weights():
    model = tiny_classifier()
    init = capture_state(model)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(1.0)
    masks = weight_masks(model)
    masks.masks["vit.blocks.0.mlp.fc1.weight"][:5] = False
    rewind(model, init, masks)
    for name, param in model.named_parameters():
        if name in masks:
            assert torch.equal(param[masks[name]], init[name][masks[name]])
            assert not param[~masks[name]].any()
        else:
            assert torch.equal(param, init[name])
    with torch.no_grad():  # captured copies are independent of the model
        model.head.weight.add_(1.0)
    assert not torch.equal(model.head.weight, init["head.weight"])


def test_refill_callback_next_round_masks_and_checkpoint_state():
    model = tiny_classifier()
    callback = RefillCallback(rate=0.2, fillback_rate=0.0, criterion="l1", scoring_batch=tiny_batch())
    callback.on_train_end(None, None, None, model=model)
    nxt = callback.next_masks
    total = sum(m.numel() for n, m in nxt.magnitude.items())
    assert sum(int(m.sum()) for _, m in nxt.magnitude.items()) == total - round(0.2 * total)
    again = RefillCallback()
    again.load_state_dict(RefillCallback(nxt).state_dict())
    for name, mask in nxt.train.items():
        assert torch.equal(again.masks.train[name], mask)
