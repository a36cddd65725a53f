"""Model folders load as remote code without rae_hf, so a shared helper they need is copied into them verbatim under
`# Copied from rae_hf.<module>.<name>` (the transformers convention). Every such copy must equal its original."""

import ast
import importlib
import inspect
import re

from conftest import ROOT

MARKER = re.compile(r"^# Copied from (rae_hf(?:\.\w+)+)\.(\w+)\s*$")


def _copies() -> list[tuple[str, int, str, str]]:
    """(file, line, original module, name) of every marked copy under rae_hf/models."""
    found = []
    for path in sorted((ROOT / "rae_hf" / "models").rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            match = MARKER.match(line)
            if match:
                found.append((str(path.relative_to(ROOT)), number, match[1], match[2]))
    return found


def _definition(source: str, name: str) -> str:
    """Source text of the top-level function or class `name`."""
    tree = ast.parse(source)
    node = next(n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == name)
    return ast.get_source_segment(source, node)


def test_copied_helpers_equal_their_original():
    copies = _copies()
    assert ("rae_hf/models/rae/configuration_rae.py", "rae_hf.models.presets", "apply_preset") in [
        (file, module, name) for file, _, module, name in copies
    ]
    for file, line, module, name in copies:
        original = inspect.getsource(getattr(importlib.import_module(module), name))
        copy = _definition((ROOT / file).read_text(), name)
        assert copy == original.rstrip("\n"), f"{file}:{line}: {name} differs from {module}.{name}"
