"""Every `run_*.py` script takes its image transforms from the one registry (`image_transform(preset, ...)` over
`TRANSFORM_PRESETS`): none imports torchvision, a preset builder by its own name, or defines a transform class of its
own (before: run_jit.py had its own copy of the ADM crop and run_prune.py built a third pipeline)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import rae_hf.data.transforms as transforms

SCRIPTS = sorted((Path(transforms.__file__).parents[1] / "scripts").glob("run_*.py"))
# Builders a script must not call directly: everything the registry wraps (the registry accessor is the one way in).
BUILDERS = {
    "ADMCenterCrop",
    "MultiCropTransform",
    "adm_center_crop",
    "adm_center_crop_transform",
    "build_image_transform",
    "multicrop_transform",
    "padded_crop_train_transform",
    "probe_eval_transform",
    "probe_train_transform",
    "resize_transform",
    "to_float_tensor",
}


def test_every_script_is_checked():
    assert {"run_rae.py", "run_jit.py", "run_prune.py", "run_probe.py", "run_dino_pretrain.py"} <= {
        p.name for p in SCRIPTS
    }


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_takes_its_transforms_from_the_registry(script):
    tree = ast.parse(script.read_text())
    imported, called = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert not any(alias.name.split(".")[0] == "torchvision" for alias in node.names), script.name
        elif isinstance(node, ast.ImportFrom):
            assert (node.module or "").split(".")[0] != "torchvision", f"{script.name} imports {node.module}"
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ClassDef):
            methods = {item.name for item in node.body if isinstance(item, ast.FunctionDef)}
            assert "__call__" not in methods, f"{script.name} defines its own transform {node.name}"
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            called.add(node.func.id)
    assert not imported & BUILDERS, f"{script.name} builds transforms itself: {sorted(imported & BUILDERS)}"
    assert "image_transform" in imported and "image_transform" in called, f"{script.name} skips the registry"


def test_the_registry_builds_every_name_the_scripts_ask_for():
    """The preset names written in the scripts exist (a typo would only fail at run time)."""
    for script in SCRIPTS:
        for node in ast.walk(ast.parse(script.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "image_transform" and node.args:
                name = node.args[0]
                if isinstance(name, ast.Constant):
                    assert name.value in transforms.TRANSFORM_PRESETS, f"{script.name}: {name.value}"
