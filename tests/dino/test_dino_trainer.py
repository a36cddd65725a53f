"""DinoTrainer: schedules, parameter groups, the EMA teacher, the frozen last layer and exact resume."""

from __future__ import annotations

import math

import pytest
import torch
from dino_toys import ToyMultiCrop, dino_args, tiny_dino

from rae_hf.data.multicrop import MultiCropCollator
from rae_hf.trainers.dino_trainer import DinoTrainer, cosine_schedule, layer_id, linear_warmup, no_weight_decay


def _trainer(tmp_path, model=None, **overrides) -> DinoTrainer:
    model = model or tiny_dino()
    return DinoTrainer(
        model=model,
        args=dino_args(tmp_path, **overrides),
        train_dataset=ToyMultiCrop(),
        data_collator=MultiCropCollator(8),
    )


def test_schedule_shapes_at_given_steps() -> None:
    # warm-up is linspace(0, base, warmup): last warm-up step reaches base; cosine to final at `total`
    assert cosine_schedule(0, 1.0, 0.0, 10, warmup=3) == 0.0
    assert cosine_schedule(1, 1.0, 0.0, 10, warmup=3) == pytest.approx(0.5)
    assert cosine_schedule(3, 1.0, 0.1, 10, warmup=3) == pytest.approx(1.0)
    assert cosine_schedule(3 + 7 / 2, 1.0, 0.0, 10, warmup=3) == pytest.approx(0.5)
    assert cosine_schedule(10, 1.0, 0.1, 10, warmup=3) == 0.1
    assert linear_warmup(0, 0.04, 0.07, 4) == pytest.approx(0.04)
    assert linear_warmup(3, 0.04, 0.07, 4) == pytest.approx(0.07)
    assert linear_warmup(100, 0.04, 0.07, 4) == 0.07


def test_trainer_schedules_follow_the_dinov2_rules(tmp_path) -> None:
    trainer = _trainer(tmp_path, max_steps=20, epoch_length=4, warmup_epochs=1, warmup_teacher_temperature_epochs=2)
    trainer.train()
    args = trainer.args
    assert trainer.peak_lr == pytest.approx(0.004 * math.sqrt(4 / 1024))  # sqrt(batch / 1024) scaling
    assert trainer.lr_at(0) == 0.0 and trainer.lr_at(3) == pytest.approx(trainer.peak_lr)
    assert trainer.lr_at(20) == pytest.approx(args.min_lr)
    assert trainer.weight_decay_at(0) == pytest.approx(0.04) and trainer.weight_decay_at(20) == pytest.approx(0.4)
    assert trainer.weight_decay_at(10) == pytest.approx(0.22)
    assert trainer.teacher_temperature_at(0) == pytest.approx(0.04)
    assert trainer.teacher_temperature_at(7) == pytest.approx(0.07) == trainer.teacher_temperature_at(15)
    assert trainer.teacher_momentum_at(1) == pytest.approx(0.992)  # the update after the first step
    assert trainer.teacher_momentum_at(11) == pytest.approx(0.996)
    assert trainer.teacher_momentum_at(21) == pytest.approx(1.0)
    assert trainer.freeze_last_layer_steps == 4
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged[0]["teacher_temperature"] == pytest.approx(0.04)
    assert {"loss_dino", "loss_ibot", "loss_koleo", "teacher_entropy", "center_norm"} <= set(logged[0])


def test_parameter_groups_layerwise_decay_and_no_decay() -> None:
    assert layer_id("embeddings.patch_embeddings.projection.weight", 12) == 0
    assert layer_id("embeddings.cls_token", 12) == 0
    assert layer_id("encoder.layer.0.attention.q_proj.weight", 12) == 1
    assert layer_id("encoder.layer.11.mlp.fc1.weight", 12) == 12
    assert layer_id("layernorm.weight", 12) == 13
    assert no_weight_decay("encoder.layer.0.norm1.weight") and no_weight_decay("encoder.layer.0.mlp.fc1.bias")
    assert no_weight_decay("encoder.layer.0.layer_scale1.lambda1")
    assert not no_weight_decay("embeddings.position_embeddings") and not no_weight_decay("mlp.0.weight")
    # rae_hf ViT variants (timm names)
    for name in ("cls_token", "pos_embed", "mask_token", "patch_embed.proj.weight"):
        assert layer_id(name, 9) == 0, name
    assert layer_id("blocks.0.attn.qkv.weight", 9) == 1 and layer_id("blocks.8.mlp.fc2.bias", 9) == 9
    assert layer_id("norm.weight", 9) == 10 and no_weight_decay("blocks.3.norm2.weight")


def test_optimizer_groups_get_scheduled_lr_and_weight_decay(tmp_path) -> None:
    trainer = _trainer(tmp_path, max_steps=1, layerwise_decay=0.5)
    trainer.train()
    groups = trainer.optimizer.param_groups
    names = {id(p): n for n, p in trainer.model.student.named_parameters()}

    def group_of(name: str) -> dict:
        return next(g for g in groups if any(names[id(p)] == name for p in g["params"]))

    # 2 blocks: patch embed 0.5^3 x 0.2, block 0 0.5^2, final norm 1; heads 1
    assert group_of("backbone.embeddings.patch_embeddings.projection.weight")["lr_multiplier"] == pytest.approx(0.025)
    assert group_of("backbone.embeddings.position_embeddings")["lr_multiplier"] == pytest.approx(0.125)
    assert group_of("backbone.encoder.layer.0.mlp.fc1.weight")["lr_multiplier"] == pytest.approx(0.25)
    assert group_of("backbone.layernorm.weight")["lr_multiplier"] == 1.0
    assert group_of("backbone.layernorm.weight")["weight_decay"] == 0.0
    assert group_of("dino_head.mlp.0.weight")["weight_decay"] > 0
    assert all(g["lr"] == 0.0 for g in groups if g["is_last_layer"])  # still frozen after step 1 of 2


def test_teacher_gets_no_gradient_and_follows_the_ema_formula(tmp_path) -> None:
    model = tiny_dino()
    trainer = _trainer(tmp_path, model=model, max_steps=1, warmup_epochs=0)
    before = {n: p.detach().clone() for n, p in model.teacher.named_parameters()}
    trainer.train()
    assert all(p.grad is None and not p.requires_grad for p in model.teacher.parameters())
    student = dict(model.student.named_parameters())
    for name, param in model.teacher.named_parameters():
        expected = 0.992 * before[name] + 0.008 * student[name].detach()
        torch.testing.assert_close(param, expected, rtol=1e-5, atol=1e-7)
    moved = model.student["backbone"].encoder.layer[0].mlp.fc1.weight
    assert not torch.equal(moved, before["backbone.encoder.layer.0.mlp.fc1.weight"])


def test_last_layer_frozen_during_first_epoch(tmp_path) -> None:
    model = tiny_dino()
    last = model.student["dino_head"].last_layer.parametrizations.weight.original1
    start = last.detach().clone()
    _trainer(tmp_path, model=model, max_steps=2, epoch_length=2, freeze_last_layer_epochs=1).train()
    assert torch.equal(last, start)
    _trainer(tmp_path / "b", model=model, max_steps=3, epoch_length=2, freeze_last_layer_epochs=1).train()
    assert not torch.equal(last, start)


@pytest.mark.parametrize("centering", ["softmax", "sinkhorn_knopp"])
def test_exact_resume(tmp_path, centering: str) -> None:
    full_model = tiny_dino()
    full = _trainer(tmp_path / "full", model=full_model, max_steps=4, centering=centering)
    full.train()
    first = _trainer(tmp_path / "part", model=tiny_dino(), max_steps=4, save_strategy="steps", save_steps=2)
    first.args.centering = centering
    first.train()
    resumed_model = tiny_dino(seed=1)  # different init: everything must come from the checkpoint
    resumed = _trainer(tmp_path / "part", model=resumed_model, max_steps=4, centering=centering)
    resumed.train(resume_from_checkpoint=str(tmp_path / "part" / "checkpoint-2"))
    for (name, a), b in zip(full_model.state_dict().items(), resumed_model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(full.dino_loss.center, resumed.dino_loss.center)
    torch.testing.assert_close(full.ibot_loss.center, resumed.ibot_loss.center)
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(full.optimizer.param_groups[0]["lr"])


def test_dino_v1_method_has_no_ibot_nor_koleo(tmp_path) -> None:
    model = tiny_dino(use_ibot=False)
    trainer = _trainer(tmp_path, model=model, max_steps=2, method="dino")
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert "loss_ibot" not in logged[0] and "loss_koleo" not in logged[0]
    assert trainer.ibot_loss is None
    with pytest.raises(ValueError, match="use_ibot"):
        _trainer(tmp_path, model=tiny_dino(use_ibot=False), method="dinov2")


def test_compute_loss_pairs_each_local_crop_with_both_globals(tmp_path) -> None:
    torch.manual_seed(0)
    data = ToyMultiCrop(count=4, num_local=3)
    batch = MultiCropCollator(8)([data[i] for i in range(4)])
    trainer = _trainer(tmp_path, koleo_loss_weight=0.0, ibot_loss_weight=0.0, method="dino")
    trainer.model.eval()
    loss, outputs = trainer.compute_loss(trainer.model, batch, return_outputs=True)
    targets = torch.softmax(outputs.teacher_global_logits / 0.04, dim=-1).chunk(2)  # centre 0, T_t at step 0
    views = [*outputs.student_global_logits.chunk(2), *outputs.student_local_logits.chunk(3)]
    expected, pairs = 0.0, 0
    for s_index, student in enumerate(views):
        for t_index, target in enumerate(targets):
            if s_index != t_index:
                expected -= (target * torch.log_softmax(student / 0.1, dim=-1)).sum(-1).mean()
                pairs += 1
    assert pairs == 2 + 3 * 2
    torch.testing.assert_close(loss, expected / pairs)
    torch.testing.assert_close(trainer.dino_loss.center, 0.1 * outputs.teacher_global_logits.mean(0, keepdim=True))
