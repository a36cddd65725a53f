"""The package as pip installs it: every module, recipe and accelerate config is in the built wheel, every package
folder has an __init__.py, every script has a console command whose `--recipe quickstart` finds its method's
quickstart without a checkout, and `import rae_hf` stays light."""

from __future__ import annotations

import configparser
import importlib
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from rae_hf import cli
from rae_hf.resources import find_accelerate_config, find_recipe, main, shipped_folder, shipped_recipes

ROOT = Path(__file__).resolve().parents[2]
METHODS = sorted(p.name for p in (ROOT / "recipes").iterdir() if p.is_dir())


def _package_dirs() -> list[Path]:
    return sorted({path.parent for path in (ROOT / "rae_hf").rglob("*.py") if "__pycache__" not in path.parts})


def test_every_package_folder_has_an_init():
    missing = [str(d.relative_to(ROOT)) for d in _package_dirs() if not (d / "__init__.py").is_file()]
    assert not missing, f"left out of wheels (no __init__.py): {missing}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dist")
    command = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(folder)]
    subprocess.run([*command, str(ROOT)], check=True, capture_output=True)
    (built,) = folder.glob("rae_hf-*.whl")
    return built


@pytest.mark.slow
def test_built_wheel_holds_every_module(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {str(p.relative_to(ROOT)) for p in (ROOT / "rae_hf").rglob("*.py") if "__pycache__" not in p.parts}
    assert sources and sources <= names, sorted(sources - names)[:5]
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    parser = configparser.ConfigParser()
    parser.read_string(zipfile.ZipFile(wheel).read(entry_points).decode())
    for command, target in parser["console_scripts"].items():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), command


def test_every_script_has_a_console_command_and_a_thin_wrapper():
    setup = (ROOT / "setup.py").read_text()
    for wrapper in sorted(ROOT.glob("run_*.py")):
        module = f"rae_hf.scripts.{wrapper.stem}"
        assert f"{module}:main" in setup, f"{wrapper.name} has no console command"
        assert f"from {module} import main" in wrapper.read_text()
        assert len(wrapper.read_text().splitlines()) <= 8, f"{wrapper.name} should only call {module}.main"


@pytest.mark.slow
def test_built_wheel_ships_every_recipe_and_accelerate_config(wheel, tmp_path):
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in ("recipes", "accelerate_configs"):
        shipped = {str(p.relative_to(ROOT)) for p in (ROOT / folder).rglob("*.yaml")}
        assert shipped and {f"rae_hf/{name}" for name in shipped} <= names, folder
    assert {f"rae_hf/recipes/{method}/quickstart.yaml" for method in METHODS} <= names
    # installed from the wheel (pure Python: unpacked), away from any checkout, names resolve to the wheel's files
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = "from rae_hf.resources import *; print(find_recipe('rae/quickstart')); print(find_accelerate_config('fsdp'))"
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == [
        str(site / "rae_hf" / "recipes" / "rae" / "quickstart.yaml"),
        str(site / "rae_hf" / "accelerate_configs" / "fsdp.yaml"),
    ]


def test_a_checkout_reads_the_root_folders():
    assert shipped_folder("recipes") == ROOT / "recipes"
    assert shipped_folder("accelerate_configs") == ROOT / "accelerate_configs"
    assert {f"{method}/quickstart" for method in METHODS} <= set(shipped_recipes())


def test_recipe_names_resolve_to_shipped_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no recipes/ folder here, as after a pip install
    expected = str(ROOT / "recipes" / "rae" / "quickstart.yaml")
    for name in ("rae/quickstart", "rae/quickstart.yaml", "recipes/rae/quickstart.yaml"):
        assert find_recipe(name) == expected
    assert find_accelerate_config("multi_gpu") == str(ROOT / "accelerate_configs" / "multi_gpu.yaml")
    local = tmp_path / "mine.yaml"
    local.write_text("seed: 1\n")
    assert find_recipe("mine.yaml") == "mine.yaml"  # an existing file wins
    with pytest.raises(ValueError, match="ambiguous"):
        find_recipe("quickstart")  # every method has one
    with pytest.raises(FileNotFoundError, match="rae/quickstart"):
        find_recipe("rae/no_such_recipe")
    with pytest.raises(FileNotFoundError, match="multi_gpu"):
        find_accelerate_config("no_such_config")


class _Parsed(Exception):
    pass


def _dataclass_types(module_name: str, monkeypatch) -> tuple:
    """The argument dataclasses a script's `main` parses (its `parse_args` call is intercepted)."""
    module = importlib.import_module(module_name)

    def intercept(dataclass_types, argv=None):
        raise _Parsed(tuple(dataclass_types))

    monkeypatch.setattr(module, "parse_args", intercept)
    with pytest.raises(_Parsed) as parsed:
        module.main([])
    return parsed.value.args[0]


def _script_modules() -> list[str]:
    """The script modules of setup.py's console commands."""
    return re.findall(r'"[\w-]+ = (rae_hf\.scripts\.\w+):main"', (ROOT / "setup.py").read_text())


@pytest.mark.parametrize("method", METHODS)
def test_every_method_command_finds_its_quickstart_by_name(method, tmp_path, monkeypatch):
    """`rae-hf-<method> --recipe quickstart`: of all the quickstarts, only the method's own fits its script."""
    (module,) = [m for m in _script_modules() if m.rsplit(".", 1)[1] in (f"run_{method}", f"run_{method}_pretrain")]
    types = _dataclass_types(module, monkeypatch)
    monkeypatch.chdir(tmp_path)
    parsed = cli.parse_args(types, ["--recipe", "quickstart", "--seed", "3"])
    training_args = parsed[-1]
    recipe = cli.read_recipe(str(ROOT / "recipes" / method / "quickstart.yaml"))
    assert os.path.normpath(training_args.output_dir) == os.path.normpath(recipe["output_dir"])
    assert training_args.seed == 3  # command-line flags still override the recipe


def test_resources_command_prints_a_shipped_path(capsys):
    main(["accelerate_config", "cpu_ddp"])
    assert capsys.readouterr().out.strip() == str(ROOT / "accelerate_configs" / "cpu_ddp.yaml")
    main([])
    assert "rae/quickstart" in capsys.readouterr().out


def test_the_recipe_argument_forms():
    for argv in (
        ["rae/q.yaml", "--seed", "1"],
        ["--seed", "1", "--recipe", "rae/q.yaml"],
        ["--recipe=rae/q.yaml", "--seed", "1"],
    ):
        rest = list(argv)
        assert cli._pop_recipe(rest) == "rae/q.yaml" and rest == ["--seed", "1"]
    assert cli._pop_recipe(["--seed", "1"]) is None
    with pytest.raises(ValueError, match="--recipe needs"):
        cli._pop_recipe(["--recipe"])
