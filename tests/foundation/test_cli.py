"""One YAML/JSON recipe plus command-line overrides into typed dataclasses; the resolved config is saved."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
import yaml

from rae_hf.cli import parse_args, save_run_config


@dataclass
class Options:
    name: str = "a"
    rate: float = 0.1
    sizes: list[int] = field(default_factory=lambda: [1, 2])
    flag: bool = False
    optional: int | None = None


def test_yaml_values_then_command_line_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("name: recipe\nrate: 0.5\nsizes: [3, 4, 5]\nflag: true\noptional: null\n")
    (options,) = parse_args([Options], [str(path), "--rate", "0.25"])
    assert options == Options(name="recipe", rate=0.25, sizes=[3, 4, 5], flag=True, optional=None)


def test_json_file_and_plain_flags(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"name": "json", "optional": 3}))
    assert parse_args([Options], [str(path)])[0] == Options(name="json", optional=3)
    assert parse_args([Options], ["--flag", "--name", "x"])[0] == Options(name="x", flag=True)


def test_unknown_key_and_non_mapping_are_rejected(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("nme: typo\n")
    with pytest.raises(ValueError, match="nme"):
        parse_args([Options], [str(path)])
    path.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="mapping"):
        parse_args([Options], [str(path)])


def test_yaml_is_not_executed(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(yaml.constructor.ConstructorError):
        parse_args([Options], [str(path)])


def test_save_run_config(tmp_path):
    path = save_run_config(str(tmp_path), Options(name="saved"))
    assert json.loads(open(path).read()) == {
        "Options": {"name": "saved", "rate": 0.1, "sizes": [1, 2], "flag": False, "optional": None}
    }


@dataclass
class Required:
    path: str = field(metadata={"help": "no default: required on the command line unless a recipe sets it"})
    limit: int | None = 100
    names: list[str] = field(default_factory=lambda: ["x"])


def test_recipe_values_are_defaults_so_null_and_empty_lists_survive(tmp_path):
    """Before, the recipe became command-line text: `null` was dropped and `[]` was rejected."""
    path = tmp_path / "r.yaml"
    path.write_text("path: data\nlimit: null\nnames: []\n")
    (options,) = parse_args([Required], [str(path)])
    assert options == Required(path="data", limit=None, names=[])
    (options,) = parse_args([Required], [str(path), "--limit", "5", "--names", "a", "b"])
    assert options == Required(path="data", limit=5, names=["a", "b"])


def test_empty_report_to_reaches_training_arguments(tmp_path):
    from transformers import TrainingArguments

    path = tmp_path / "r.yaml"
    path.write_text("report_to: []\n")
    (args,) = parse_args([TrainingArguments], [str(path), "--output_dir", str(tmp_path / "out")])
    assert args.report_to == []


def test_a_list_for_a_scalar_names_the_argument(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("path: data\nlimit: [1, 2]\n")
    with pytest.raises(ValueError, match="limit takes one value"):
        parse_args([Required], [str(path)])


def test_a_required_argument_missing_everywhere_is_an_error(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("limit: 3\n")
    with pytest.raises(SystemExit):
        parse_args([Required], [str(path)])
