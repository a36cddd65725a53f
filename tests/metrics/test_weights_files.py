"""Nothing in a weights file a user passes is executed: Inception weights (FID, IS, --compute_fid_stats) and the LPIPS
backbone are read with `torch.load(weights_only=True)`; torch-fidelity's own `weights_only=False` load never sees the
user's file (issue 9.1)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torchvision.models import VGG16_Weights

import rae_hf.metrics.fid as fid_module
from rae_hf.losses import LPIPSLoss
from rae_hf.metrics import (
    INCEPTION_WEIGHTS_URL,
    FIDMetric,
    InceptionFeatureExtractor,
    InceptionScore,
    load_inception_state_dict,
    save_random_inception_weights,
)


class Payload:
    """Unpickling this runs `touch <marker>`."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def payload(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(1), "x": Payload(marker)}, path)
    return path, marker


@pytest.mark.parametrize(
    "build",
    [
        InceptionFeatureExtractor,
        lambda path: FIDMetric(inception_weights=path),
        lambda path: InceptionScore(inception_weights=path),
        load_inception_state_dict,
    ],
    ids=["extractor", "fid", "inception_score", "state_dict"],
)
def test_pickle_payload_in_inception_weights_is_refused_not_run(payload, build):
    path, marker = payload
    with pytest.raises(ValueError, match=rf"Refused to load the Inception weights {path}: .*GLOBAL posix.system"):
        build(path)
    assert not marker.exists()


def test_torch_fidelity_never_unpickles_the_users_file(tmp_path, monkeypatch):
    """Every torch.load of the user's path is weights-only; torch-fidelity only gets re-serialized tensors."""
    weights = save_random_inception_weights(tmp_path / "inception.pth")
    calls = []
    real_load = torch.load

    def recording_load(source, *args, **kwargs):
        calls.append((source, kwargs.get("weights_only")))
        return real_load(source, *args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    extractor = InceptionFeatureExtractor(weights)
    assert (weights, True) in calls
    assert all(weights_only for source, weights_only in calls if str(source) == str(weights))
    assert all(not isinstance(source, (str, os.PathLike)) for source, weights_only in calls if not weights_only)
    reference = torch.load(weights, weights_only=True)
    assert torch.equal(extractor.network.fc.weight, reference["fc.weight"])


def test_downloaded_inception_weights_are_read_weights_only(tmp_path, monkeypatch):
    state = torch.load(save_random_inception_weights(tmp_path / "inception.pth"), weights_only=True)
    seen = {}

    def fake_download(url, **kwargs):
        seen.update(url=url, **kwargs)
        return state

    monkeypatch.setattr(fid_module, "load_state_dict_from_url", fake_download)
    extractor = InceptionFeatureExtractor(None)
    assert seen["url"] == INCEPTION_WEIGHTS_URL and seen["weights_only"] is True
    assert torch.equal(extractor.network.fc.weight, state["fc.weight"])


def test_wrong_or_unreadable_inception_files_name_the_file(tmp_path):
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, wrong)
    with pytest.raises(ValueError, match=rf"{wrong} is not an FID Inception-v3 state dict"):
        InceptionFeatureExtractor(wrong)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=rf"Refused to load the Inception weights {garbage}: .*nothing in it was"):
        InceptionFeatureExtractor(garbage)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=rf"Could not read the Inception weights {empty}"):
        InceptionFeatureExtractor(empty)
    not_a_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], not_a_dict)
    with pytest.raises(ValueError, match="not a state dict of tensors"):
        InceptionFeatureExtractor(not_a_dict)


def test_pickle_payload_as_lpips_backbone_is_refused_not_run(payload):
    path, marker = payload
    with pytest.raises(Exception, match="Weights only load failed"):
        LPIPSLoss(pretrained_backbone=True, backbone_weights=str(path))
    assert not marker.exists()


@pytest.mark.parametrize("owner", ["inception", "lpips"])
def test_pickle_payload_in_the_torch_hub_cache_is_not_run(tmp_path, monkeypatch, owner):
    """The hub cache is where users put weights for offline machines: it is read weights-only too."""
    marker = tmp_path / "PWNED"
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    name = {"inception": INCEPTION_WEIGHTS_URL, "lpips": VGG16_Weights.IMAGENET1K_V1.url}[owner].rsplit("/", 1)[1]
    torch.save({"x": Payload(marker)}, cache / name)
    with pytest.raises(Exception, match=r"GLOBAL posix\.system"):
        InceptionFeatureExtractor(None) if owner == "inception" else LPIPSLoss()
    assert not marker.exists()
