"""What a run publishes holds no pickle: every file each quickstart leaves in its output folder (outside
`checkpoint-N`, whose optimizer/scheduler/RNG files Trainer itself pickles), and our own nested checkpoint state is
safetensors + JSON, read back exactly."""

from __future__ import annotations

import zipfile

import pytest
import torch
from quickstarts import QUICKSTARTS, published_files, quickstart_output

from rae_hf.metrics import load_inception_state_dict, save_random_inception_weights
from rae_hf.trainers.state_files import load_state_files, save_state_files


def is_pickle(path) -> bool:
    """A raw pickle (protocol 2+ starts with 0x80) or torch's zip format (holds a `.pkl`)."""
    with open(path, "rb") as f:
        if f.read(1) == b"\x80":
            return True
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith(".pkl") for name in archive.namelist())
    return False


def test_is_pickle_recognises_torch_and_plain_pickles(tmp_path):
    torch.save({"a": torch.ones(1)}, tmp_path / "zip.pt")
    torch.save({"a": torch.ones(1)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    (tmp_path / "plain.json").write_text("{}")
    assert is_pickle(tmp_path / "zip.pt") and is_pickle(tmp_path / "legacy.pt")
    assert not is_pickle(tmp_path / "plain.json")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(QUICKSTARTS))
def test_quickstart_outputs_hold_no_pickle(tmp_path_factory, name):
    files = published_files(quickstart_output(name, tmp_path_factory))
    assert any(path.name == "model.safetensors" for path in files)
    assert [path for path in files if is_pickle(path)] == []


def test_nested_state_round_trips_exactly_without_pickle(tmp_path):
    """An Adam state dict (int keys, tuples, None, tensors), a LambdaLR's and a scaler's, exactly as saved."""
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.5, 0.9))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.1 + 1 / (step + 3))
    for _ in range(3):
        model(torch.randn(4, 3)).square().sum().backward()
        optimizer.step()
        scheduler.step()
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": {}}
    state["nan"] = [float("nan")]
    paths = save_state_files(state, str(tmp_path), "state")
    assert not any(is_pickle(path) for path in paths)
    loaded = load_state_files(str(tmp_path), "state")
    assert loaded["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]  # betas stay a tuple
    assert loaded["scheduler"] == state["scheduler"] and loaded["scaler"] == {}
    for index, entry in state["optimizer"]["state"].items():  # int keys kept
        for key, value in entry.items():
            assert torch.equal(loaded["optimizer"]["state"][index][key], value)
    assert loaded["nan"][0] != loaded["nan"][0]
    with pytest.raises(TypeError, match="without pickle"):
        save_state_files({"function": len}, str(tmp_path), "bad")


def test_random_inception_weights_as_safetensors(tmp_path):
    path = save_random_inception_weights(tmp_path / "inception.safetensors")
    assert not is_pickle(path)
    pickled = load_inception_state_dict(save_random_inception_weights(tmp_path / "inception.pth"))
    loaded = load_inception_state_dict(path)
    assert loaded.keys() == pickled.keys() and all(torch.equal(loaded[k], pickled[k]) for k in loaded)
