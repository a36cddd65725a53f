"""What every `run_*.py` script shares: argument parsing (one YAML/JSON file plus command-line overrides),
logging set-up, and saving the resolved configuration of a run."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import typing
from collections.abc import Sequence

import datasets
import transformers
import yaml
from transformers import HfArgumentParser

from .resources import find_recipe

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
# Arguments renamed since they were published (old -> new): a recipe key or a flag with the old name is an error.
RENAMED_ARGUMENTS = {
    "rfid_steps": "fid_steps",
    "rfid_at_epoch_end": "fid_at_epoch_end",
    "rfid_num_samples": "fid_num_samples",
}


def _refuse_renamed(names: Sequence[str], where: str, prefix: str = "") -> None:
    """Raise a `ValueError` naming the new name of every renamed argument in `names`."""
    renamed = [
        f"{prefix}{old} was renamed {prefix}{RENAMED_ARGUMENTS[old]}" for old in names if old in RENAMED_ARGUMENTS
    ]
    if renamed:
        raise ValueError(f"{where}: {'; '.join(renamed)}.")


def read_recipe(path: str) -> dict:
    """A recipe file as a mapping (YAML read with `yaml.safe_load`: nothing in it is executed)."""
    with open(path) as f:
        config = yaml.safe_load(f) if path.endswith((".yaml", ".yml")) else json.load(f)
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ValueError(f"{path} must hold a mapping of argument names to values.")
    return config


def _accepts_list(annotation) -> bool:
    """Whether a dataclass field's type allows a list (`list[int]`, `str | list[str] | None`...)."""
    if typing.get_origin(annotation) is list or annotation is list:
        return True
    return any(_accepts_list(arg) for arg in typing.get_args(annotation))


def _field_types(dataclass_types: Sequence[type]) -> dict[str, object]:
    types: dict[str, object] = {}
    for cls in dataclass_types:
        hints = typing.get_type_hints(cls)
        types.update({f.name: hints.get(f.name, f.type) for f in dataclasses.fields(cls)})
    return types


def _apply_recipe(parser: HfArgumentParser, dataclass_types: Sequence[type], config: dict, path: str) -> None:
    """Make the recipe's values the parser's defaults (values are kept as they are: null and [] included)."""
    actions = {action.dest: action for action in parser._actions}
    types = _field_types(dataclass_types)
    _refuse_renamed(list(config), path)
    unknown = sorted(set(config) - set(actions))
    if unknown:
        raise ValueError(f"{path} sets unknown arguments {unknown}; run the script with --help for the list.")
    for key, value in config.items():
        action = actions[key]
        takes_list = _accepts_list(types.get(key))
        if isinstance(value, list) and not takes_list:
            raise ValueError(f"{path}: {key} takes one value, got the list {value}.")
        if isinstance(value, list) and action.type is not None:
            config[key] = [action.type(v) if isinstance(v, str) else v for v in value]
        action.required = False
    parser.set_defaults(**config)


def _pop_recipe(argv: list[str]) -> str | None:
    """Take the recipe out of `argv`: a first argument ending in .yaml/.yml/.json, or `--recipe NAME`."""
    if argv and argv[0].endswith(CONFIG_SUFFIXES) and not argv[0].startswith("-"):
        return argv.pop(0)
    for index, arg in enumerate(argv):
        if arg.startswith("--recipe="):
            return argv.pop(index).split("=", 1)[1]
        if arg == "--recipe":
            if index + 1 == len(argv):
                raise ValueError("--recipe needs a name or a path, e.g. --recipe quickstart.")
            name = argv.pop(index + 1)
            argv.pop(index)
            return name
    return None


def parse_args(dataclass_types: Sequence[type], argv: Sequence[str] | None = None) -> tuple:
    """Parse `[config.yaml|config.json|--recipe NAME] [--overrides ...]` into the given dataclasses.

    The file's values become the parser's defaults (so `null` and empty lists survive) and command-line flags
    override them; an unknown key, or a list for a one-value argument, is an error naming it.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(dataclass_types)
    recipe = _pop_recipe(argv)
    if recipe is not None:  # a file, else a shipped recipe by name (`--recipe quickstart`, see rae_hf.resources)
        keys = {action.dest for action in parser._actions}
        path = find_recipe(recipe, fits=lambda candidate: set(read_recipe(candidate)) <= keys)
        _apply_recipe(parser, dataclass_types, read_recipe(path), path)
    flags = [arg[2:].split("=", 1)[0] for arg in argv if arg.startswith("--")]
    _refuse_renamed(flags, "the command line", "--")
    return parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)


def setup_logging(training_args) -> logging.Logger:
    """Transformers-style logging: INFO on the main process, warnings elsewhere."""
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    level = training_args.get_process_log_level()
    for module in (transformers.utils.logging, datasets.utils.logging):
        module.set_verbosity(level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()
    logger = logging.getLogger("rae_hf")
    logger.setLevel(level)
    return logger


def save_run_config(output_dir: str, *arguments) -> str:
    """Write every argument of the run (resolved defaults included) to `output_dir/run_config.json`."""
    resolved: dict = {}
    for args in arguments:
        values = args.to_dict() if hasattr(args, "to_dict") else dataclasses.asdict(args)
        resolved[type(args).__name__] = values
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, "run_config.json")
    with open(path, "w") as f:
        json.dump(resolved, f, indent=2, default=str)
    return path


def train_and_save(trainer, resume_from_checkpoint, dataset: str | None):
    """The training scripts' common run: `trainer.train` (resuming from `resume_from_checkpoint`), then the final
    model (what the trainer leaves in it, e.g. EMA weights), the train metrics, the trainer state and the model card
    naming `dataset`. Returns the `TrainOutput`."""
    result = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    trainer.save_model()
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    trainer.create_model_card(dataset=dataset)
    return result
