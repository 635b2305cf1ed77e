"""The YAML + command-line parser every recipe and script uses, and the recipes' argument sets.

We extend transformers' `HfArgumentParser` rather than TRL's `TrlParser`: it is the parser every
transformers example uses, it keeps TRL (and its own dependency tree) out of a project that trains no
policy, and the one feature we borrow from TRL — YAML values become argparse *defaults*, so any CLI
flag overrides them — is a few lines on top of it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, NoReturn

import yaml
from transformers import HfArgumentParser

from florence_recipes.configs.data import DataArguments
from florence_recipes.configs.evaluation import EvaluationArguments
from florence_recipes.configs.model import ModelArguments
from florence_recipes.configs.training import FlorenceTrainingArguments, check_precision


class RecipeArgumentParser(HfArgumentParser):
    """`HfArgumentParser` that reads `--config recipe.yaml` and lets every CLI flag override it."""

    def __init__(self, dataclass_types: tuple[type, ...], **kwargs: Any) -> None:
        super().__init__(dataclass_types, **kwargs)
        self.add_argument(
            "--config", type=str, default=None, help="YAML recipe; CLI flags override its values."
        )

    def error(self, message: str) -> NoReturn:
        # One line, no usage dump: the usage of ~200 training flags buries the actual problem.
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(2)

    def parse(self, args: list[str] | None = None) -> tuple[Any, ...]:
        args = sys.argv[1:] if args is None else list(args)
        config_path, rest = self._split_config_flag(args)
        if config_path is not None:
            self._apply_yaml_defaults(Path(config_path))
        try:
            parsed = self.parse_args_into_dataclasses(rest, look_for_args_file=False)
        except ValueError as err:  # validation in the dataclasses' __post_init__
            self.error(str(err).strip().splitlines()[0])
        return parsed[: len(self.dataclass_types)]

    def _split_config_flag(self, args: list[str]) -> tuple[str | None, list[str]]:
        config, rest, i = None, [], 0
        while i < len(args):
            if args[i] == "--config":
                if i + 1 >= len(args):
                    self.error("--config needs a path to a YAML file")
                config, i = args[i + 1], i + 2
            elif args[i].startswith("--config="):
                config, i = args[i].split("=", 1)[1], i + 1
            else:
                rest.append(args[i])
                i += 1
        return config, rest

    def _apply_yaml_defaults(self, path: Path) -> None:
        if not path.is_file():
            self.error(f"config file not found: {path}")
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            self.error(f"{path}: invalid YAML ({str(err).splitlines()[0]})")
        if not isinstance(values, dict):
            self.error(f"{path}: expected a mapping of argument names to values")
        known = {f.name for dtype in self.dataclass_types for f in fields(dtype) if f.init}
        unknown = sorted(set(values) - known)
        if unknown:
            self.error(f"{path}: unknown key(s) {', '.join(repr(k) for k in unknown)}")
        self.set_defaults(**values)
        for action in self._actions:
            if action.dest in values:
                action.required = False  # given in the YAML, so no longer required on the CLI


def parse_recipe_args(
    args: list[str] | None = None,
) -> tuple[ModelArguments, DataArguments, FlorenceTrainingArguments]:
    args = sys.argv[1:] if args is None else list(args)
    parser = RecipeArgumentParser((ModelArguments, DataArguments, FlorenceTrainingArguments))
    model_args, data_args, training_args = parser.parse(args)
    data_args.task_on_command_line = any(arg == "--task" or arg.startswith("--task=") for arg in args)
    try:
        check_precision(model_args, training_args)
        if training_args.vision_learning_rate is not None and model_args.training_mode != "full":
            raise ValueError(
                f"vision_learning_rate trains the vision tower: valid only with training_mode=full (got "
                f"{model_args.training_mode}, which freezes it)"
            )
    except ValueError as err:
        parser.error(str(err))
    return model_args, data_args, training_args


def parse_evaluation_args(
    args: list[str] | None = None,
) -> tuple[ModelArguments, DataArguments, EvaluationArguments]:
    parser = RecipeArgumentParser((ModelArguments, DataArguments, EvaluationArguments))
    # `--split` reads better than `--eval_split` for a script that only evaluates; both set the same field.
    parser.add_argument(
        "--split", dest="eval_split", default=argparse.SUPPRESS, help="Split to evaluate (= --eval_split)."
    )
    return parser.parse(args)


def given_options(args: Sequence[str]) -> set[str]:
    """The options a user set, on the command line (`--x 1`, `--x=1`) or in its `--config` YAML: what the
    checkpoint's training record must not override."""
    given = {arg[2:].split("=", 1)[0] for arg in args if arg.startswith("--")}
    config, _ = RecipeArgumentParser((EvaluationArguments,))._split_config_flag(list(args))
    if config is not None and Path(config).is_file():
        given |= set(yaml.safe_load(Path(config).read_text(encoding="utf-8")) or {})
    return given
