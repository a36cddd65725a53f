"""Pretrained weights from timm-format and transformers-format checkpoints (tiny, saved locally), with resizing."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from transformers import ViTConfig, ViTForImageClassification

from rae_hf.models.vit import ViTVariantForImageClassification, build_vit, load_pretrained_weights
from rae_hf.models.vit.pretrained import config_from_checkpoint, read_pretrained, resample_patch_embed

HF_TINY = dict(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=48, num_labels=5, layer_norm_eps=1e-6)  # fmt: skip


@pytest.fixture(scope="module")
def hf_vit(tmp_path_factory):
    """A tiny transformers ViTForImageClassification with random weights, saved; returns (model, folder)."""
    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(**HF_TINY)).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.1)
    folder = tmp_path_factory.mktemp("hf_vit")
    model.save_pretrained(folder)
    return model, folder


def timm_state_from_hf(folder) -> dict[str, torch.Tensor]:
    """The saved hub-layout weights under timm's names, written out by hand (independent of the library's converter)."""
    s = safetensors.torch.load_file(folder / "model.safetensors")
    out = {
        "cls_token": s["vit.embeddings.cls_token"],
        "pos_embed": s["vit.embeddings.position_embeddings"],
        "patch_embed.proj.weight": s["vit.embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": s["vit.embeddings.patch_embeddings.projection.bias"],
        "norm.weight": s["vit.layernorm.weight"],
        "norm.bias": s["vit.layernorm.bias"],
        "head.weight": s["classifier.weight"],
        "head.bias": s["classifier.bias"],
    }
    for i in range(HF_TINY["num_hidden_layers"]):
        p = f"vit.encoder.layer.{i}."
        for kind in ("weight", "bias"):
            out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat(
                [s[f"{p}attention.attention.{n}.{kind}"] for n in ("query", "key", "value")]
            )
            out[f"blocks.{i}.attn.proj.{kind}"] = s[f"{p}attention.output.dense.{kind}"]
            out[f"blocks.{i}.norm1.{kind}"] = s[f"{p}layernorm_before.{kind}"]
            out[f"blocks.{i}.norm2.{kind}"] = s[f"{p}layernorm_after.{kind}"]
            out[f"blocks.{i}.mlp.fc1.{kind}"] = s[f"{p}intermediate.dense.{kind}"]
            out[f"blocks.{i}.mlp.fc2.{kind}"] = s[f"{p}output.dense.{kind}"]
    return out


@pytest.fixture(scope="module")
def timm_folder(hf_vit, tmp_path_factory):
    """The tiny model as a timm hub folder: model.safetensors + timm-style config.json (pretrained_cfg)."""
    folder = tmp_path_factory.mktemp("timm_vit")
    safetensors.torch.save_file(timm_state_from_hf(hf_vit[1]), folder / "model.safetensors")
    config = {"architecture": "vit_tiny_test", "num_classes": 5, "model_args": {"num_heads": 4},
              "pretrained_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("source", ["transformers", "transformers-in-memory-names", "timm"])
def test_same_logits_as_source_at_source_resolution(hf_vit, timm_folder, tmp_path, source):
    model, hf_folder = hf_vit
    folder = {"transformers": hf_folder, "timm": timm_folder}.get(source, tmp_path)
    if source == "transformers-in-memory-names":  # transformers 5 module names (layers.N.attention.q_proj, ...)
        safetensors.torch.save_file(model.state_dict(), tmp_path / "model.safetensors")
        (tmp_path / "config.json").write_text((hf_folder / "config.json").read_text())
    state, config = read_pretrained(str(folder))
    ours = ViTVariantForImageClassification(config_from_checkpoint(state, config)).eval()
    report = load_pretrained_weights(ours, str(folder))
    assert report == {"resized": [], "skipped": []}
    pixels = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours(pixels).logits, model(pixels).logits, atol=1e-5, rtol=1e-5)
    assert ours.config.image_mean == [0.5, 0.5, 0.5]


@pytest.mark.parametrize("source", ["transformers", "timm"])
def test_resized_embeddings_for_a_smaller_patch_and_other_grid(hf_vit, timm_folder, source):
    _, hf_folder = hf_vit
    folder = hf_folder if source == "transformers" else timm_folder
    target = build_vit(
        None, pretrained_source=str(folder), image_size=16, patch_size=2, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=48, num_labels=10,
    ).eval()  # fmt: skip
    assert target.vit.patch_embed.proj.weight.shape == (32, 3, 2, 2)
    assert target.vit.pos_embed.shape == (1, 8 * 8 + 1, 32)
    source_state = safetensors.torch.load_file(hf_folder / "model.safetensors")
    # block weights copied as they are; the head (5 classes) is not, the model keeps its own 10-class head
    torch.testing.assert_close(
        target.vit.blocks[1].mlp.fc1.weight, source_state["vit.encoder.layer.1.intermediate.dense.weight"]
    )
    torch.testing.assert_close(target.vit.cls_token, source_state["vit.embeddings.cls_token"])
    assert target.head.weight.shape == (10, 32)
    # the resized position grid keeps the cls token and interpolates the patch positions
    torch.testing.assert_close(target.vit.pos_embed[:, 0], source_state["vit.embeddings.position_embeddings"][:, 0])
    assert torch.isfinite(target(torch.randn(2, 3, 16, 16)).logits).all()


def test_pi_resize_is_exact_when_upsampling():
    """PI-resize: <x, w> = <resize(x), w_new> for every patch x when the new patch is larger."""
    torch.manual_seed(0)
    weight = torch.randn(6, 3, 4, 4, dtype=torch.float64)
    new = resample_patch_embed(weight, 8)
    patches = torch.randn(5, 3, 4, 4, dtype=torch.float64)
    resized = F.interpolate(patches, size=(8, 8), mode="bicubic", antialias=True, align_corners=False)
    torch.testing.assert_close(F.conv2d(resized, new), F.conv2d(patches, weight), atol=1e-8, rtol=1e-8)


def test_vit_tiny_has_no_weights_and_bad_files_are_named(tmp_path):
    with pytest.raises(ValueError, match="vit_tiny"):
        build_vit("vit_tiny", pretrained=True)
    (tmp_path / "model.safetensors").write_bytes(b"")
    safetensors.torch.save_file({"something.weight": torch.zeros(2)}, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="Unrecognized checkpoint"):
        load_pretrained_weights(build_vit("vit_tiny"), str(tmp_path))
