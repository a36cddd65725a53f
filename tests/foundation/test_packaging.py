"""The package as pip installs it: every module is in the built wheel, every package folder has an __init__.py,
every script has a console command, and `import rae_hf` stays light."""

from __future__ import annotations

import configparser
import importlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _package_dirs() -> list[Path]:
    return sorted({path.parent for path in (ROOT / "rae_hf").rglob("*.py") if "__pycache__" not in path.parts})


def test_every_package_folder_has_an_init():
    missing = [str(d.relative_to(ROOT)) for d in _package_dirs() if not (d / "__init__.py").is_file()]
    assert not missing, f"left out of wheels (no __init__.py): {missing}"


@pytest.mark.slow
def test_built_wheel_holds_every_module(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("rae_hf-*.whl")
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
