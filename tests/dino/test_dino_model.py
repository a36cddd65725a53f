"""DinoModel: student/teacher construction, heads, masked-patch logits, backbones, save/load via the Auto classes."""

from __future__ import annotations

import pytest
import torch
from dino_toys import tiny_dino
from transformers import AutoModel, Dinov2WithRegistersConfig, ViTConfig

from rae_hf.data.multicrop import MultiCropCollator
from rae_hf.models.dino import DinoConfig, DinoHead, DinoModel


def _batch(num_images: int = 3, grid: int = 8, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    masks = MultiCropCollator(grid).masks(2 * num_images, torch.Generator().manual_seed(seed))
    return {
        "global_crops": torch.randn(2 * num_images, 3, 32, 32),
        "local_crops": torch.randn(2 * num_images, 3, 16, 16),
        "masks": masks["masks"],
        "mask_indices": masks["mask_indices"],
    }


def test_teacher_starts_as_student_without_gradients_and_in_eval_mode() -> None:
    model = tiny_dino()
    for (name, s), t in zip(model.student.named_parameters(), model.teacher.parameters(), strict=True):
        assert torch.equal(s, t), name
        assert not t.requires_grad
    model.train()
    assert model.student.training and not model.teacher.training
    assert model.teacher["backbone"].config.drop_path_rate == 0.0
    assert model.student["backbone"].config.drop_path_rate == 0.1


def test_head_architecture_and_init() -> None:
    head = tiny_dino(head_num_layers=3).student["dino_head"]
    assert isinstance(head, DinoHead)
    linears = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(32, 32), (32, 32), (32, 16)]
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in linears)
    weight = head.last_layer.parametrizations.weight
    assert torch.equal(weight.original0, torch.ones_like(weight.original0))  # norms g = 1
    assert head.last_layer.bias is None
    rows = head.last_layer.weight.norm(dim=1)
    torch.testing.assert_close(rows, torch.ones_like(rows))  # weight-normed prototypes


def test_forward_shapes_and_masked_patch_logits() -> None:
    model = tiny_dino().eval()
    batch = _batch()
    out = model(**batch)
    masked = int(batch["masks"].sum())
    assert out.student_global_logits.shape == out.teacher_global_logits.shape == (6, 64)
    assert out.student_local_logits.shape == (6, 64)
    assert out.student_patch_logits.shape == out.teacher_patch_logits.shape == (masked, 64)
    assert out.student_cls_tokens.shape == (6, 32)
    # iBOT logits are the head applied to the patch tokens at the masked positions of the masked student forward
    hidden = model.student["backbone"](batch["global_crops"], bool_masked_pos=batch["masks"]).last_hidden_state
    expected = model.student["dino_head"](hidden[:, 1:][batch["masks"]])
    torch.testing.assert_close(out.student_patch_logits, expected, rtol=1e-4, atol=1e-5)
    teacher_hidden = model.teacher["backbone"](batch["global_crops"]).last_hidden_state  # the teacher is unmasked
    torch.testing.assert_close(
        out.teacher_patch_logits, model.teacher["dino_head"](teacher_hidden[:, 1:][batch["masks"]])
    )
    no_ibot = model(batch["global_crops"])
    assert no_ibot.student_patch_logits is None and no_ibot.student_local_logits is None


def test_separate_ibot_head_and_register_backbone() -> None:
    backbone = Dinov2WithRegistersConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, patch_size=4, image_size=32,
        num_register_tokens=2,
    )  # fmt: skip
    config = DinoConfig(
        backbone_config=backbone, image_size=32, head_out_dim=64, head_hidden_dim=32, head_bottleneck_dim=16,
        ibot_separate_head=True, ibot_out_dim=48, ibot_hidden_dim=32, ibot_bottleneck_dim=8,
    )  # fmt: skip
    assert config.num_prefix_tokens == 3
    out = DinoModel(config)(**_batch())
    assert out.student_patch_logits.shape[1] == 48 and out.student_global_logits.shape[1] == 64


def test_vit_backbone_gets_a_mask_token() -> None:
    backbone = ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, patch_size=4, image_size=32
    )
    model = DinoModel(DinoConfig(backbone_config=backbone, image_size=32, head_out_dim=64, head_hidden_dim=32))
    out = model(**_batch())
    assert out.student_patch_logits.shape[0] == int(_batch()["masks"].sum())


def test_config_validation_names_the_argument() -> None:
    with pytest.raises(ValueError, match="head_out_dim"):
        DinoConfig(head_out_dim=0)
    with pytest.raises(ValueError, match="image_size"):
        DinoConfig(image_size=100)  # not a multiple of the default patch 16


def test_save_and_load_with_auto_classes(tmp_path) -> None:
    model = tiny_dino()
    with torch.no_grad():
        for param in model.teacher.parameters():
            param.add_(0.5)  # a teacher that differs from the student
    model.save_pretrained(tmp_path / "dino")
    assert (tmp_path / "dino" / "modeling_dino.py").is_file()  # remote code travels with the weights
    loaded = AutoModel.from_pretrained(tmp_path / "dino")
    assert isinstance(loaded, DinoModel)
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    model.save_backbone(tmp_path / "backbone")
    backbone = AutoModel.from_pretrained(tmp_path / "backbone")
    for name, value in backbone.state_dict().items():
        assert torch.equal(value, model.teacher["backbone"].state_dict()[name]), name
