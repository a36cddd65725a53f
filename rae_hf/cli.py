"""What every `run_*.py` script shares: argument parsing (one YAML/JSON file plus command-line overrides),
logging set-up, and saving the resolved configuration of a run."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from collections.abc import Sequence

import datasets
import transformers
import yaml
from transformers import HfArgumentParser
from transformers.trainer_utils import get_last_checkpoint

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def _config_to_argv(config: dict) -> list[str]:
    """Turn `{key: value}` from a recipe file into `--key value` tokens that HfArgumentParser understands."""
    argv: list[str] = []
    for key, value in config.items():
        if value is None:
            continue
        if isinstance(value, dict):
            argv += [f"--{key}", json.dumps(value)]
        elif isinstance(value, (list, tuple)):
            argv += [f"--{key}", *(str(v) for v in value)]
        else:
            argv += [f"--{key}", str(value)]
    return argv


def parse_args(dataclass_types: Sequence[type], argv: Sequence[str] | None = None) -> tuple:
    """Parse `[config.yaml|config.json] [--overrides ...]` into the given dataclasses.

    Values of the file come first and command-line flags after them, so a flag overrides the file. Nothing in the
    file is executed: YAML is read with `yaml.safe_load`.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].endswith(CONFIG_SUFFIXES):
        path = argv.pop(0)
        with open(path) as f:
            config = yaml.safe_load(f) if path.endswith((".yaml", ".yml")) else json.load(f)
        if not isinstance(config, dict):
            raise ValueError(f"{path} must hold a mapping of argument names to values.")
        known = {f.name for cls in dataclass_types for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"{path} sets unknown arguments {unknown}; run the script with --help for the list.")
        argv = _config_to_argv(config) + argv
    parser = HfArgumentParser(dataclass_types)
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


def resolve_resume_checkpoint(training_args) -> str | None:
    """`--resume_from_checkpoint last` -> the newest `checkpoint-*` of `output_dir` (a clear error when none)."""
    resume = training_args.resume_from_checkpoint
    if resume == "last":
        resume = get_last_checkpoint(training_args.output_dir)
        if resume is None:
            raise FileNotFoundError(
                f"--resume_from_checkpoint last: no checkpoint-* folder in {training_args.output_dir}"
            )
    return resume
