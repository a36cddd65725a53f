"""The recipes and accelerate configs shipped with rae_hf, found by name.

They live at the repository root (`recipes/<method>/<name>.yaml`, `accelerate_configs/<name>.yaml`) and a wheel
carries them inside the package (`rae_hf/recipes`, `rae_hf/accelerate_configs`, see setup.py), so
`rae-hf-rae --recipe quickstart` runs from a plain `pip install`; an editable install or a checkout reads the root.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
RECIPES, ACCELERATE_CONFIGS = "recipes", "accelerate_configs"
RECIPE_SUFFIXES = (".yaml", ".yml", ".json")


def shipped_folder(name: str) -> Path:
    """`recipes` or `accelerate_configs`: the copy inside the installed package (a wheel), else the checkout's."""
    for folder in (PACKAGE_DIR / name, PACKAGE_DIR.parent / name):
        if folder.is_dir():
            return folder
    raise FileNotFoundError(f"rae_hf has no {name}/ folder (looked in {PACKAGE_DIR} and {PACKAGE_DIR.parent}).")


def shipped_recipes() -> list[str]:
    """Every shipped recipe as `<method>/<name>`."""
    root = shipped_folder(RECIPES)
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.glob("*/*") if p.suffix in RECIPE_SUFFIXES)


def _shipped_file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, *(folder / f"{name}{suffix}" for suffix in RECIPE_SUFFIXES)):
        if candidate.is_file():
            return candidate
    return None


def find_recipe(name: str, fits: Callable[[str], bool] | None = None) -> str:
    """The path of a recipe given as a file path, or by name among the shipped recipes: `rae/quickstart` (a leading
    `recipes/` and the suffix are optional, so the documented `recipes/rae/quickstart.yaml` works without a
    checkout) or `quickstart`, the one recipe of that name that `fits(path)` the script (each method's recipes hold
    arguments only its script takes)."""
    if Path(name).is_file():
        return name
    root = shipped_folder(RECIPES)
    relative = name.removeprefix(f"{RECIPES}/")
    found = _shipped_file(root, relative)
    if found is not None:
        return str(found)
    known = shipped_recipes()
    if "/" not in relative:
        stem = Path(relative).stem
        candidates = [recipe for recipe in known if recipe.split("/", 1)[1] == stem]
        if fits is not None and len(candidates) > 1:
            candidates = [c for c in candidates if fits(str(_shipped_file(root, c)))]
        if len(candidates) == 1:
            return str(_shipped_file(root, candidates[0]))
        if candidates:
            raise ValueError(f"Recipe {name!r} is ambiguous: name one of {candidates}.")
    raise FileNotFoundError(f"No recipe file {name!r} and no shipped recipe of that name; shipped: {known}")


def find_accelerate_config(name: str) -> str:
    """The path of a shipped accelerate config (`multi_gpu`, `fsdp`, `cpu_ddp`...), for `accelerate launch
    --config_file`; a path to an existing file is returned as it is."""
    if Path(name).is_file():
        return name
    folder = shipped_folder(ACCELERATE_CONFIGS)
    found = _shipped_file(folder, name.removeprefix(f"{ACCELERATE_CONFIGS}/"))
    if found is None:
        known = sorted(p.stem for p in folder.glob("*.yaml"))
        raise FileNotFoundError(f"No accelerate config {name!r}; shipped: {known}")
    return str(found)


def main(argv: list[str] | None = None) -> None:
    """`python -m rae_hf.resources [recipe|accelerate_config NAME]`: print a shipped file's path (e.g. for
    `accelerate launch --config_file`), or list what is shipped."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 2 and args[0] in ("recipe", "accelerate_config"):
        print(find_recipe(args[1]) if args[0] == "recipe" else find_accelerate_config(args[1]))
        return
    configs = sorted(p.stem for p in shipped_folder(ACCELERATE_CONFIGS).glob("*.yaml"))
    print("recipes:", " ".join(shipped_recipes()), "\naccelerate configs:", " ".join(configs))


if __name__ == "__main__":
    main()
