"""Renamed options (`rfid_*` -> `fid_*`) are refused with their new name, in recipes and on the command line, and no
published recipe uses an old name."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import ROOT

from rae_hf.cli import RENAMED_ARGUMENTS, parse_args, read_recipe
from rae_hf.trainers.rae_config import RAETrainingArguments

OLD_NAMES = {"rfid_steps": "fid_steps", "rfid_at_epoch_end": "fid_at_epoch_end", "rfid_num_samples": "fid_num_samples"}


def test_old_names_are_gone_from_the_arguments():
    fields = {field.name for field in dataclasses.fields(RAETrainingArguments)}
    assert RENAMED_ARGUMENTS == OLD_NAMES
    assert not set(OLD_NAMES) & fields and set(OLD_NAMES.values()) <= fields


@pytest.mark.parametrize(("old", "new"), sorted(OLD_NAMES.items()))
def test_recipe_with_an_old_name_names_the_new_one(tmp_path, old, new):
    recipe = tmp_path / "old.yaml"
    recipe.write_text(f"output_dir: {tmp_path / 'run'}\n{old}: 4\nfid_reference_stats: null\n")
    with pytest.raises(ValueError, match=rf"old\.yaml: {old} was renamed {new}\.$"):
        parse_args([RAETrainingArguments], [str(recipe)])


@pytest.mark.parametrize("flag", ["--rfid_steps", "--rfid_steps=4"])
def test_command_line_old_name_names_the_new_one(tmp_path, flag):
    argv = ["--output_dir", str(tmp_path), flag, *(["4"] if "=" not in flag else [])]
    with pytest.raises(ValueError, match=r"the command line: --rfid_steps was renamed --fid_steps\.$"):
        parse_args([RAETrainingArguments], argv)
    with pytest.raises(ValueError, match="--rfid_num_samples was renamed --fid_num_samples"):
        parse_args([RAETrainingArguments], ["--output_dir", str(tmp_path), "--rfid_num_samples", "8"])


def test_new_names_parse(tmp_path):
    recipe = tmp_path / "new.yaml"
    recipe.write_text(f"output_dir: {tmp_path / 'run'}\nfid_steps: 4\nfid_num_samples: 8\nuse_cpu: true\n")
    (args,) = parse_args([RAETrainingArguments], [str(recipe), "--fid_at_epoch_end", "false"])
    assert (args.fid_steps, args.fid_num_samples, args.fid_at_epoch_end) == (4, 8, False)


def test_no_recipe_uses_a_renamed_key():
    recipes = sorted(
        path for folder in (ROOT / "recipes", ROOT / "rae_hf" / "recipes") for path in folder.rglob("*.yaml")
    )
    assert recipes
    used = {
        str(path.relative_to(ROOT)): sorted(set(read_recipe(str(path))) & set(RENAMED_ARGUMENTS)) for path in recipes
    }
    assert {path: keys for path, keys in used.items() if keys} == {}
