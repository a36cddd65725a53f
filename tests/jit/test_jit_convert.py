"""Official JiT checkpoints -> JiTModel: outputs equal an independent reference forward; errors are clear."""

from __future__ import annotations

import argparse

import pytest
import torch
from jit_helpers import randomize, tiny_config, tiny_model
from official_reference import reference_forward

from rae_hf.convert import main as convert_main
from rae_hf.convert.jit import config_from_state_dict, convert_jit_checkpoint
from rae_hf.models.jit import JiTConfig, JiTModel


def official_checkpoint(path, **config_overrides) -> dict:
    """An official-layout checkpoint: three `net.`-prefixed state dicts, optimizer, epoch and argparse args."""
    states = {}
    for seed, key in enumerate(("model", "model_ema1", "model_ema2")):
        model = tiny_model(seed=seed, **config_overrides)
        states[key] = {f"net.{k}": v for k, v in model.state_dict().items()}
    args = argparse.Namespace(model="custom", proj_dropout=0.0, noise_scale=1.0, t_eps=0.05, P_mean=-0.8)
    checkpoint = {**states, "optimizer": {"state": {}, "param_groups": []}, "epoch": 5, "args": args}
    torch.save(checkpoint, path)
    return checkpoint


def test_model_matches_independent_reference_forward():
    model = tiny_model(seed=3)
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([0.2, 0.9]), torch.tensor([1, 3])
    expected = reference_forward(model.state_dict(), x, t, y, num_heads=2, in_context_start=1, patch=4)
    assert (model(x, t, y).prediction - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("weights", ["model_ema1", "model_ema2", "model"])
def test_convert_official_checkpoint_matches_reference(tmp_path, weights):
    checkpoint = official_checkpoint(tmp_path / "checkpoint-last.pth")
    model = convert_jit_checkpoint(str(tmp_path / "checkpoint-last.pth"), str(tmp_path / "out"), weights,
                                   in_context_start=1)  # fmt: skip
    loaded = JiTModel.from_pretrained(tmp_path / "out").eval()
    x, t, y = torch.randn(3, 3, 16, 16), torch.tensor([0.0, 0.5, 0.97]), torch.tensor([0, 2, 3])
    expected = reference_forward(checkpoint[weights], x, t, y, num_heads=2, in_context_start=1, patch=4)
    for candidate in (model, loaded):
        assert (candidate(x, t, y).prediction - expected).abs().max() <= 1e-5
    assert loaded.config.num_classes == 3 and loaded.config.intermediate_size == tiny_config().intermediate_size


def test_cli_and_size_inference(tmp_path, capsys):
    official_checkpoint(tmp_path / "ckpt.pth")
    convert_main(["jit", str(tmp_path / "ckpt.pth"), str(tmp_path / "out"), "--in_context_start", "1"])
    assert "Saved JiT" in capsys.readouterr().out
    assert (tmp_path / "out" / "model.safetensors").is_file()
    with torch.device("meta"):
        published = JiTModel(JiTConfig.from_preset("JiT-H/32", num_classes=1000))
    inferred = config_from_state_dict(published.state_dict(), argparse.Namespace(model="JiT-H/32"))
    fields = (
        "image_size",
        "patch_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "bottleneck_dim",
        "num_classes",
        "in_context_start",
        "dropout",
        "noise_scale",
    )
    assert {f: getattr(inferred, f) for f in fields} == {f: getattr(published.config, f) for f in fields}


def test_clear_errors(tmp_path):
    official_checkpoint(tmp_path / "ckpt.pth")
    with pytest.raises(ValueError, match="in_context_start"):
        convert_jit_checkpoint(str(tmp_path / "ckpt.pth"))  # custom size: the start block is not in the tensors
    torch.save({"model": {"net.foo": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="Not a JiT state dict"):
        convert_jit_checkpoint(str(tmp_path / "other.pth"), weights="model")
    with pytest.raises(KeyError, match="model_ema1"):
        convert_jit_checkpoint(str(tmp_path / "other.pth"))
    bad = {k: v for k, v in randomize(JiTModel(tiny_config())).state_dict().items()}
    bad["final_layer.linear.bias"][0] = float("nan")
    torch.save({"model_ema1": bad}, tmp_path / "nan.pth")
    with pytest.raises(ValueError, match="non-finite"):
        convert_jit_checkpoint(str(tmp_path / "nan.pth"), in_context_start=1)


class Unsafe:
    pass


def test_refuses_pickled_objects_other_than_namespace(tmp_path):
    torch.save({"model_ema1": {}, "args": Unsafe()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="weights-only"):
        convert_jit_checkpoint(str(tmp_path / "evil.pth"))
