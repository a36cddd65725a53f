"""`import rae_hf` stays light: models only, no training/evaluation libraries until a module that needs them is used."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

HEAVY = ("torchmetrics", "peft", "diffusers", "lpips", "torch_fidelity", "datasets", "wandb", "matplotlib")
TASK_MODULES = ("rae_hf.probe", "rae_hf.trainers", "rae_hf.convert", "rae_hf.evaluation", "rae_hf.callbacks")
SCRIPT = """
import json, sys
import rae_hf
after_rae_hf = sorted(sys.modules)
import rae_hf.convert, rae_hf.models.checkpoint_io
print(json.dumps({"rae_hf": after_rae_hf, "convert": sorted(sys.modules)}))
"""


@pytest.fixture(scope="module")
def imported() -> dict[str, set[str]]:
    """Modules loaded (in a fresh interpreter) after `import rae_hf`, then after `import rae_hf.convert`."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return {key: set(value) for key, value in json.loads(result.stdout.strip().splitlines()[-1]).items()}


@pytest.mark.slow
def test_import_rae_hf_is_light(imported):
    """Neither the heavy libraries nor the task packages are imported by `import rae_hf`; the models are (and
    models never import task code: imports flow models <- trainers <- scripts)."""
    modules = imported["rae_hf"]
    assert [name for name in HEAVY if name in modules] == []
    assert [name for name in TASK_MODULES if name in modules] == []
    assert {"rae_hf.models.rae", "rae_hf.models.probe", "rae_hf.models.backbone"} <= modules


@pytest.mark.slow
def test_convert_package_loads_without_diffusers(imported):
    """`rae_hf.convert` imports diffusers only when a diffusers conversion runs."""
    assert "diffusers" not in imported["convert"] and "rae_hf.convert.rae_official" in imported["convert"]
