"""Imports flow one way (design notes): every import of an rae_hf module, module-level or inside a function, goes to
the same or a lower layer, the model folders import nothing outside `rae_hf.models`, and no two packages import each
other (directly or through others). Read from the source with `ast`, so nothing is imported."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "rae_hf"

# Layer of every top-level package or module of rae_hf: a module may import its own layer or a lower one.
LAYERS: dict[str, int] = {
    # 0: shared building blocks that know no model or trainer
    "data": 0,
    "metrics": 0,
    "losses": 0,
    "diffusion": 0,
    "text_pixels": 0,
    "visualization": 0,
    "utils": 0,
    "resources": 0,  # package data (recipes, accelerate configs)
    # 1: models (self-contained: see SELF_CONTAINED)
    "models": 1,
    # 2: task code built on models: evaluation, callbacks, probing, pruning, sampling pipelines, converters, hub
    "evaluation": 2,
    "callbacks": 2,
    "probe": 2,
    "prune": 2,
    "pipelines": 2,
    "convert": 2,
    "hub": 2,
    "tools": 2,
    # 3: trainers (configs and Trainer subclasses)
    "trainers": 3,
    # 4: the command-line layer and the scripts it serves
    "cli": 4,
    "scripts": 5,
    # 6: the package's public API (`rae_hf/__init__.py`)
    "": 6,
}
# Packages whose modules import nothing of rae_hf outside themselves (model folders load as remote code).
SELF_CONTAINED = ("models",)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """rae_hf modules `name` imports anywhere in its source (relative imports resolved; `from x import y` counts as
    an import of `x.y` when that is a module, else of `x`)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1] + [node.module or ""]).strip(".")
            base = node.module if node.level == 0 else base
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {target for target in found if target == "rae_hf" or target.startswith("rae_hf.")}


def top_level(name: str) -> str:
    """`rae_hf.models.rae.x` -> `models`; the package itself -> ``""``."""
    return name.split(".")[1] if "." in name else ""


def import_edges() -> list[tuple[str, str]]:
    """(importing module, imported module) pairs between different top-level packages of rae_hf."""
    modules = all_modules()
    known = set(modules)
    return [
        (name, target)
        for name, path in modules.items()
        for target in sorted(imported_modules(name, path, known))
        if top_level(target) != top_level(name)
    ]


def test_every_package_has_a_layer():
    unknown = sorted({top_level(name) for name in all_modules()} - set(LAYERS))
    assert unknown == [], f"Give these rae_hf packages a layer in LAYERS (tests/foundation): {unknown}"


def test_no_upward_import():
    upward = [
        f"{source} -> {target}"
        for source, target in import_edges()
        if LAYERS.get(top_level(target), 0) > LAYERS.get(top_level(source), 0)
    ]
    assert upward == [], "Imports must flow down the layers of LAYERS:\n" + "\n".join(upward)


def test_models_import_only_models():
    outside = [f"{source} -> {target}" for source, target in import_edges() if top_level(source) in SELF_CONTAINED]
    assert outside == [], "rae_hf.models imports nothing outside itself:\n" + "\n".join(outside)


def test_no_loop_between_packages():
    graph: dict[str, set[str]] = defaultdict(set)
    for source, target in import_edges():
        graph[top_level(source)].add(top_level(target))

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph[start] - seen:
            if nxt == goal or reaches(nxt, goal, seen | {nxt}):
                return True
        return False

    loops = sorted(package for package in list(graph) if reaches(package, package, set()))
    assert loops == [], f"Packages in an import loop: {loops}"


def test_the_walk_sees_function_level_and_relative_imports(tmp_path):
    """The walk itself: an import inside a function and a relative `from ...x import y` are found and resolved."""
    folder = tmp_path / "rae_hf" / "models" / "rae"
    folder.mkdir(parents=True)
    source = folder / "__init__.py"
    source.write_text("def f():\n    from ...convert import rae_from_diffusers\n    import rae_hf.trainers\n")
    known = {"rae_hf.convert", "rae_hf.trainers"}
    assert imported_modules("rae_hf.models.rae", source, known) == {"rae_hf.convert", "rae_hf.trainers"}
