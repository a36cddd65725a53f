"""Official DiT-DH checkpoints -> DiTDHModel: converted weights give the reference network's outputs (fp32, 1e-5),
for training checkpoints (`ema`, `--weights model`) and flat state dicts; sizes are read from the tensors."""

from __future__ import annotations

import pytest
import torch
from official_dit_reference import DiTwDDTHead, randomized

from rae_hf.convert import main as convert_main
from rae_hf.convert.dit import config_from_state_dict, convert_dit_checkpoint
from rae_hf.models.dit import DiTDHConfig, DiTDHModel

SIZES = dict(input_size=4, in_channels=8, hidden_size=(48, 64), depth=(2, 1), num_heads=(3, 2), num_classes=5)


def reference(seed: int, **overrides) -> DiTwDDTHead:
    torch.manual_seed(seed)
    return randomized(DiTwDDTHead(**{**SIZES, **overrides}), seed).eval()


def training_checkpoint(path, **overrides) -> dict[str, DiTwDDTHead]:
    """An official training checkpoint {step, epoch, model, ema, optimizer, scheduler}; returns the two networks."""
    nets = {"model": reference(1, **overrides), "ema": reference(2, **overrides)}
    checkpoint = {k: v.state_dict() for k, v in nets.items()}
    torch.save({"step": 10, "epoch": 1, **checkpoint, "optimizer": {"state": {}, "param_groups": []}}, path)
    return nets


def assert_same_outputs(model: DiTDHModel, net: DiTwDDTHead, channels: int = 8, grid: int = 4) -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, channels, grid, grid, generator=generator)
    y = torch.tensor([0, 3, 4, 5])  # 5: null class
    for t in ([0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0069, 0.5, 0.9, 0.99701], torch.rand(4).tolist()):
        t = torch.tensor(t)
        with torch.no_grad():
            expected, actual = net(x, t, y), model(x, t, y).prediction
        assert expected.abs().mean() > 0.05
        assert (actual - expected).abs().max() <= 1e-5, f"t={t.tolist()}"


def test_cli_converts_ema_by_default(tmp_path, capsys):
    nets = training_checkpoint(tmp_path / "ckpt.pt")
    convert_main(["dit", str(tmp_path / "ckpt.pt"), str(tmp_path / "out")])
    assert "Saved DiT-DH" in capsys.readouterr().out
    assert (tmp_path / "out" / "model.safetensors").is_file()
    loaded = DiTDHModel.from_pretrained(tmp_path / "out").eval()
    config = loaded.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (48, 2, 3)
    assert (config.head_hidden_size, config.head_num_layers, config.head_num_attention_heads) == (64, 1, 2)
    assert (config.in_channels, config.input_size, config.num_classes) == (8, 4, 5)
    assert (config.intermediate_size, config.head_intermediate_size) == (128, 170)
    assert not loaded.pos_embed.requires_grad and not loaded.t_embedder.W.requires_grad
    assert_same_outputs(loaded, nets["ema"])


def test_weights_model_and_flat_state_dict(tmp_path):
    nets = training_checkpoint(tmp_path / "ckpt.pt")
    convert_main(["dit", str(tmp_path / "ckpt.pt"), str(tmp_path / "model"), "--weights", "model"])
    assert_same_outputs(DiTDHModel.from_pretrained(tmp_path / "model").eval(), nets["model"])
    torch.save(nets["ema"].state_dict(), tmp_path / "stage2_model.pt")  # the released files: a flat state dict
    model = convert_dit_checkpoint(str(tmp_path / "stage2_model.pt"), str(tmp_path / "flat"))
    assert_same_outputs(model, nets["ema"])


def test_equal_widths_identity_projector(tmp_path):
    """Encoder as wide as the head: no `s_projector` keys, and the split must be given."""
    net = reference(3, hidden_size=(32, 32), num_heads=(2, 4))
    torch.save({"ema": net.state_dict()}, tmp_path / "ckpt.pt")
    with pytest.raises(ValueError, match="num_hidden_layers"):
        convert_dit_checkpoint(str(tmp_path / "ckpt.pt"))
    convert_main(["dit", str(tmp_path / "ckpt.pt"), str(tmp_path / "out"), "--num_hidden_layers", "2"])
    loaded = DiTDHModel.from_pretrained(tmp_path / "out").eval()
    assert isinstance(loaded.s_projector, torch.nn.Identity)
    assert (loaded.config.num_attention_heads, loaded.config.head_num_attention_heads) == (2, 4)
    assert_same_outputs(loaded, net)


def test_sizes_of_published_models_are_inferred():
    for name, overrides in (("DiTDH-XL", {}), ("DiTDH-S", {}), ("DiTDH-XL", {"input_size": 32})):
        with torch.device("meta"):
            published = DiTDHModel(DiTDHConfig.from_preset(name, **overrides))
        inferred = config_from_state_dict(published.state_dict())
        fields = [k for k in published.config.to_dict() if k not in ("preset", "transformers_version", "dtype")]
        fields = [k for k in fields if not k.startswith("_") and k != "architectures"]
        assert {f: getattr(inferred, f) for f in fields} == {f: getattr(published.config, f) for f in fields}


def test_refusals_and_clear_errors(tmp_path, capsys):
    training_checkpoint(tmp_path / "ckpt.pt")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    with pytest.raises(SystemExit, match="overwrite"):
        convert_main(["dit", str(tmp_path / "ckpt.pt"), str(tmp_path / "busy")])
    assert (tmp_path / "busy" / "keep.txt").read_text() == "x" and not (tmp_path / "busy" / "config.json").exists()
    convert_main(["dit", str(tmp_path / "ckpt.pt"), str(tmp_path / "busy"), "--overwrite"])
    assert (tmp_path / "busy" / "model.safetensors").is_file()
    torch.save({"model": reference(1).state_dict()}, tmp_path / "model_only.pt")
    with pytest.raises(KeyError, match="--weights model"):
        convert_dit_checkpoint(str(tmp_path / "model_only.pt"))
    torch.save({"ema": {"foo": torch.zeros(1)}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="Not a DiT-DH state dict"):
        convert_dit_checkpoint(str(tmp_path / "other.pt"))
    bad = reference(1).state_dict()
    bad["final_layer.linear.bias"][0] = float("nan")
    torch.save(bad, tmp_path / "nan.pt")
    with pytest.raises(ValueError, match="non-finite"):
        convert_dit_checkpoint(str(tmp_path / "nan.pt"))
    with pytest.raises(SystemExit):
        convert_main(["dit", "--help"])
    assert "--weights" in capsys.readouterr().out


class Unsafe:
    pass


def test_refuses_pickled_objects(tmp_path):
    torch.save({"ema": reference(1).state_dict(), "args": Unsafe()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="weights-only"):
        convert_dit_checkpoint(str(tmp_path / "evil.pt"))
