"""YAML + command-line argument parsing: precedence, validation, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT

from florence_recipes.configs.parser import parse_recipe_args

RECIPE_YAMLS = sorted((REPO_ROOT / "recipes").glob("**/*.yaml"))


def write_yaml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return str(path)


def test_yaml_values_are_read_and_cli_overrides_them(tmp_path: Path) -> None:
    config = write_yaml(
        tmp_path,
        "output_dir: from-yaml\nlearning_rate: 3.0e-5\nnum_train_epochs: 2\ntraining_mode: frozen_vision\n"
        "max_target_length: 48\n",
    )
    model_args, data_args, training_args = parse_recipe_args(
        ["--config", config, "--learning_rate", "1e-4", "--output_dir", str(tmp_path / "cli")]
    )
    assert training_args.learning_rate == 1e-4  # CLI wins
    assert training_args.output_dir == str(tmp_path / "cli")
    assert training_args.num_train_epochs == 2  # YAML wins over the dataclass default
    assert model_args.training_mode == "frozen_vision"
    assert data_args.max_target_length == 48
    # Florence defaults that differ from Seq2SeqTrainingArguments'
    assert training_args.predict_with_generate is True
    assert training_args.remove_unused_columns is False
    assert training_args.hub_private_repo is True


def test_cli_flag_before_config_still_overrides(tmp_path: Path) -> None:
    config = write_yaml(tmp_path, "output_dir: out\nseed: 1\n")
    _, _, training_args = parse_recipe_args(["--seed", "7", "--config", config])
    assert training_args.seed == 7


def test_unknown_yaml_key_fails_with_its_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_yaml(tmp_path, "output_dir: out\nlearning_rte: 1.0e-5\n")
    with pytest.raises(SystemExit) as exc:
        parse_recipe_args(["--config", config])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "unknown key(s) 'learning_rte'" in err
    assert len(err.splitlines()) == 1


def test_unknown_cli_flag_fails_with_its_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_recipe_args(["--output_dir", "out", "--lerning_rate", "1"])
    err = capsys.readouterr().err.strip()
    assert "--lerning_rate" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("training_mode: lora_xl\n", "training_mode='lora_xl' is not one of: full, frozen_vision, lora"),
        ("lora_r: 8\n", "lora_r: valid only with training_mode=lora"),
        ("max_train_samples: 0\n", "max_train_samples must be a positive integer"),
        ("- a\n- b\n", "expected a mapping"),
    ],
)
def test_invalid_values_fail_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], yaml_text: str, message: str
) -> None:
    config = write_yaml(tmp_path, yaml_text)
    with pytest.raises(SystemExit):
        parse_recipe_args(["--config", config, "--output_dir", "out"])
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1


def test_missing_config_file_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_recipe_args(["--config", "nope/recipe.yaml"])
    assert "config file not found: nope/recipe.yaml" in capsys.readouterr().err


def test_lora_defaults_are_filled_only_in_lora_mode() -> None:
    model_args, _, _ = parse_recipe_args(["--output_dir", "out", "--training_mode", "lora"])
    assert (model_args.lora_r, model_args.lora_alpha, model_args.merge_lora) == (16, 32, False)
    model_args, _, _ = parse_recipe_args(["--output_dir", "out"])
    assert model_args.lora_r is None


@pytest.mark.parametrize("path", RECIPE_YAMLS, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_recipe_yaml_parses(path: Path) -> None:
    # GPU recipes ask for bf16, which TrainingArguments rejects on a machine without an accelerator.
    cpu_override = ["--bf16", "false"] if not torch.cuda.is_available() else []
    parse_recipe_args(["--config", str(path), *cpu_override])


def test_help_works() -> None:
    result = subprocess.run(
        [sys.executable, "recipes/docvqa.py", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "--training_mode" in result.stdout and "--config" in result.stdout
