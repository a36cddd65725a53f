"""Shared folders hold shared things, and each public name has one public home.

- A name listed in several `__all__` is only allowed along its own package chain (its defining module and the
  packages above it, the transformers facade: `rae_hf.data.sharding.shard_for_process` is `rae_hf.data`'s), never
  re-exported by an unrelated package (`rae_hf.evaluation`, `rae_hf.metrics`, ...).
- Every module of `rae_hf.callbacks` is used by the base trainer or by at least two methods; a method's own callbacks
  live beside its trainer (`trainers/<method>_callbacks.py`).
- FID reference statistics have one reader, `rae_hf.evaluation.load_reference_statistics`.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import os
import pkgutil
import subprocess
import sys
from collections import defaultdict

import pytest
from conftest import ROOT

PACKAGE = ROOT / "rae_hf"

# Re-exports across packages kept for now (exporting module -> names), each with its reason. Keep this list short.
ALLOWED_REEXPORTS = {
    # The probe package's facade also lists the probe model's and the frozen backbone's names it is built on.
    "rae_hf.probe": {
        "ProbeClassifier",
        "ProbeClassifierConfig",
        "ComponentSpec",
        "FeatureVariant",
        "check_variants",
        "compute_components",
        "variant_tensor",
        "ProbeEncoderOutput",
        "TOKEN_LAYOUTS",
        "TokenLayout",
        "register_token_layout",
    },
    "rae_hf.probe.features": {
        "ComponentSpec",
        "FeatureVariant",
        "check_variants",
        "compute_components",
        "variant_tensor",
    },
    "rae_hf.probe.encoders": {"ProbeEncoderOutput", "TOKEN_LAYOUTS", "TokenLayout", "register_token_layout"},
    "rae_hf.probe.data": {"probe_eval_transform", "probe_train_transform"},
    # The one frozen-backbone adapter exposes the token layouts of `models/rae/backbone_layouts.py`.
    "rae_hf.models.backbone": {"TOKEN_LAYOUTS", "TokenLayout", "register_token_layout", "token_layout"},
}

SCRIPT = """
import importlib, inspect, json, pkgutil
import rae_hf
names = ["rae_hf", *(info.name for info in pkgutil.walk_packages(rae_hf.__path__, "rae_hf."))]
exporters, homes = {}, {}
for name in names:
    module = importlib.import_module(name)
    for public in getattr(module, "__all__", ()):
        value = getattr(module, public)
        if isinstance(value, (bool, int, float, str, bytes, type(None))):
            continue  # equal constants may be one interned object
        key = str(id(value))
        exporters.setdefault(key, []).append([name, public])
        home = value.__module__ if inspect.isclass(value) or inspect.isfunction(value) else None
        homes[key] = home
print(json.dumps({"exporters": exporters, "homes": homes}))
"""


@pytest.fixture(scope="module")
def exports() -> dict:
    """For every public object (in a fresh interpreter): the `(module, name)` pairs that list it in `__all__`."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _on_chain(exporter: str, home: str | None) -> bool:
    """Whether `exporter` is the defining module or a package above it."""
    return home is not None and (home == exporter or home.startswith(exporter + "."))


@pytest.mark.slow
def test_one_public_path_per_name(exports):
    offending, allowed_used = [], set()
    for key, pairs in exports["exporters"].items():
        home = exports["homes"][key]
        modules = {module for module, _ in pairs}
        if home is None:  # data (tuples, dicts, aliases): re-exported up its chain, so defined in the deepest module
            home = max(modules, key=lambda module: module.count("."))
        for module, name in pairs:
            if _on_chain(module, home):
                continue
            if name in ALLOWED_REEXPORTS.get(module, ()):
                allowed_used.add((module, name))
            else:
                offending.append(f"{module}.{name} (defined in {home})")
    assert sorted(offending) == []
    allowed = {(module, name) for module, names in ALLOWED_REEXPORTS.items() for name in names}
    assert sorted(allowed - allowed_used) == [], "re-exports fixed since: remove them from ALLOWED_REEXPORTS"


@pytest.mark.slow
def test_shard_for_process_has_one_public_home(exports):
    pairs = [pair for pairs in exports["exporters"].values() for pair in pairs if pair[1] == "shard_for_process"]
    assert sorted(module for module, _ in pairs) == ["rae_hf.data", "rae_hf.data.sharding"]


def _imported_modules(path) -> set[str]:
    """Modules of `rae_hf.callbacks` a trainers file imports (`from ..callbacks import X` resolved to X's module)."""
    import rae_hf.callbacks as callbacks

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom) or node.module is None:
            continue
        module = node.module if node.level == 0 else "rae_hf." + node.module
        if module == "rae_hf.callbacks":
            found |= {getattr(callbacks, alias.name).__module__ for alias in node.names}
        elif module.startswith("rae_hf.callbacks."):
            found.add(module)
    return found


def test_callbacks_folder_holds_only_shared_callbacks():
    users: dict[str, set[str]] = defaultdict(set)
    for path in sorted((PACKAGE / "trainers").glob("*.py")):
        method = path.stem.split("_")[0]  # base_trainer -> base, jit_callbacks -> jit
        for module in _imported_modules(path):
            users[module].add(method)
    modules = [f"rae_hf.callbacks.{info.name}" for info in pkgutil.iter_modules([str(PACKAGE / "callbacks")])]
    assert modules
    method_specific = {
        module: sorted(users[module]) for module in modules if "base" not in users[module] and len(users[module]) < 2
    }
    assert method_specific == {}
    assert {"rae_hf.trainers.jit_callbacks", "rae_hf.trainers.dino_callbacks"} <= {
        f"rae_hf.trainers.{info.name}" for info in pkgutil.iter_modules([str(PACKAGE / "trainers")])
    }


def test_one_reference_statistics_loader():
    import rae_hf.evaluation as evaluation
    import rae_hf.metrics as metrics
    import rae_hf.metrics.fid as fid

    assert not hasattr(fid, "load_fid_stats") and not hasattr(metrics, "load_fid_stats")
    assert inspect.getmodule(evaluation.load_reference_statistics).__name__ == "rae_hf.evaluation.reference"
    readers = sorted(  # files reading an `.npz` with the statistics' `sigma`
        str(path.relative_to(ROOT))
        for path in PACKAGE.rglob("*.py")
        if "np.load(" in (text := path.read_text()) and "sigma" in text
    )
    assert readers == ["rae_hf/evaluation/reference.py"]


def test_evaluation_loops_live_in_evaluation():
    """`metrics/` holds the maths only: no loop over data (tqdm progress) and no file writer there."""
    loops = sorted(
        str(path.relative_to(ROOT)) for path in (PACKAGE / "metrics").glob("*.py") if "tqdm" in path.read_text()
    )
    assert loops == []
    assert importlib.util.find_spec("rae_hf.metrics.rfid") is None
    assert importlib.util.find_spec("rae_hf.metrics.sample_writer") is None
