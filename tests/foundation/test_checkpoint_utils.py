"""`rae_hf.models.checkpoint_io`: reading checkpoints for every converter without executing anything."""

import json
import os
import sys
import types

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from rae_hf.convert import available_kinds, main
from rae_hf.models.checkpoint_io import (
    load_exact,
    read_checkpoint,
    read_weights_from,
    select_state_dict,
    strip_prefixes,
)


class _Payload:
    """Unpickling this would create a file: a `torch.load` without weights_only would run it."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_read_checkpoint_executes_nothing(tmp_path):
    marker = tmp_path / "executed"
    torch.save({"model": {"w": torch.ones(1)}, "extra": _Payload(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"evil\.pt.*weights-only"):
        read_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        read_checkpoint(tmp_path / "missing.pt")


def test_select_state_dict_and_prefixes(tmp_path):
    weights = {"module._orig_mod.layer.weight": torch.ones(2)}
    checkpoint = {"epoch": 3, "model": {"a": torch.zeros(1)}, "ema": weights}
    assert select_state_dict(checkpoint, "ckpt.pt").keys() == weights.keys()  # EMA preferred
    assert select_state_dict(checkpoint, "ckpt.pt", state_key="model").keys() == {"a"}
    assert strip_prefixes(weights).keys() == {"layer.weight"}
    with pytest.raises(KeyError, match=r"ckpt\.pt has no 'teacher' entry \(top level: \['ema', 'epoch', 'model'\]\)"):
        select_state_dict(checkpoint, "ckpt.pt", state_key="teacher")
    with pytest.raises(ValueError, match="neither a state dict nor holds one"):
        select_state_dict({"epoch": 3}, "ckpt.pt")


def test_read_sharded_safetensors(tmp_path):
    save_file({"a": torch.ones(2)}, tmp_path / "part-1.safetensors")
    save_file({"b": torch.zeros(3)}, tmp_path / "part-2.safetensors")
    index = {"weight_map": {"a": "part-1.safetensors", "b": "part-2.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    state = read_weights_from(tmp_path, [("model.safetensors", "model.safetensors.index.json")])
    assert state.keys() == {"a", "b"} and torch.equal(state["b"], torch.zeros(3))
    os.remove(tmp_path / "part-2.safetensors")
    with pytest.raises(FileNotFoundError, match=r"part-2\.safetensors"):
        read_weights_from(tmp_path, [("model.safetensors", "model.safetensors.index.json")])
    with pytest.raises(FileNotFoundError, match=r"No weights \(pytorch_model.bin"):
        read_weights_from(tmp_path, [("pytorch_model.bin", "pytorch_model.bin.index.json")])


def test_load_exact_reports_every_problem():
    module = nn.Linear(2, 3)
    with pytest.raises(ValueError) as error:
        load_exact(module, {"weight": torch.zeros(3, 4), "extra": torch.zeros(1)}, "the test weights")
    message = str(error.value)
    assert "Cannot load the test weights" in message and "missing keys (1): bias" in message
    assert "unexpected keys (1): extra" in message and "weight: (3, 4) vs (3, 2)" in message
    load_exact(module, {"weight": torch.ones(3, 2), "bias": torch.ones(3)}, "good weights")
    assert torch.equal(module.weight, torch.ones(3, 2))


def test_cli_dispatches_to_converter_modules_by_name(monkeypatch, capsys):
    """`python -m rae_hf.convert <kind> ...` runs `rae_hf.convert.<kind>.main(rest)`; old command names still work."""
    assert {"rae_diffusers", "rae_official"} <= set(available_kinds()) and "checkpoint_utils" not in available_kinds()
    received = []
    fake = types.ModuleType("rae_hf.convert.my_format")
    fake.main = received.append
    monkeypatch.setitem(sys.modules, "rae_hf.convert.my_format", fake)
    main(["my-format", "in.pt", "out"])
    assert received == [["in.pt", "out"]]
    with pytest.raises(SystemExit, match="Unknown converter 'nope'"):
        main(["nope"])
    with pytest.raises(SystemExit, match="Unknown converter 'checkpoint_utils'"):
        main(["checkpoint_utils"])
    with pytest.raises(SystemExit):
        main(["from-official", "--help"])
    assert "--decoder" in capsys.readouterr().out
