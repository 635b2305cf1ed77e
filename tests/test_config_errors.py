"""Config mistakes fail at parse time, before any data or model is loaded, with one line naming the option."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import SMOKE_YAML, run_recipe_subprocess

from florence_recipes.configs.parser import parse_recipe_args


def parse_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    with pytest.raises(SystemExit) as exited:
        parse_recipe_args(["--output_dir", "unused", *args])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture
def deepspeed_config(tmp_path: Path) -> str:
    path = tmp_path / "zero2.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": "auto"}))
    return str(path)


@pytest.fixture
def no_deepspeed(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if the [deepspeed] extra were missing: `import deepspeed` fails and find_spec finds nothing."""
    monkeypatch.setitem(sys.modules, "deepspeed", None)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bf16", "true", "--fp16", "true"], "bf16 and fp16 are both true: choose one mixed precision"),
        (["--fp16", "true", "--torch_dtype", "bfloat16"], "fp16 with torch_dtype=bfloat16"),
        (["--fp16", "true", "--torch_dtype", "float16"], "fp16 with torch_dtype=float16"),
        (["--bf16", "true", "--use_cpu", "true", "--torch_dtype", "float16"], "bf16 with torch_dtype=float16"),
        (["--lora_r", "8"], "lora_r: valid only with training_mode=lora (got full)"),
        (["--on_bad_sample", "ignore"], "on_bad_sample"),
        (["--nonfinite_loss_patience", "-1"], "nonfinite_loss_patience must be >= 0, got -1"),
        (["--lerning_rate", "1e-5"], "--lerning_rate"),
    ],
    ids=["bf16_and_fp16", "fp16_bf16_weights", "fp16_fp16_weights", "bf16_fp16_weights", "lora_without_lora",
         "bad_policy", "negative_patience", "unknown_flag"],
)  # fmt: skip
def test_config_errors_are_one_line(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert message in parse_error(capsys, *args)


def test_unknown_yaml_key_is_named(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "recipe.yaml"
    config.write_text(SMOKE_YAML.read_text() + "on_bad_samples: skip\n")
    assert "unknown key(s) 'on_bad_samples'" in parse_error(capsys, "--config", str(config))


def test_deepspeed_json_without_deepspeed_names_the_extra(
    capsys: pytest.CaptureFixture[str], deepspeed_config: str, no_deepspeed: None
) -> None:
    err = parse_error(capsys, "--deepspeed", deepspeed_config)
    assert (
        f"--deepspeed {deepspeed_config} needs DeepSpeed, which is not installed: pip install -e .[deepspeed]"
        in err
    )


def test_accelerate_deepspeed_config_without_deepspeed_names_the_extra(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, no_deepspeed: None
) -> None:
    # What `accelerate launch --config_file accelerate_configs/deepspeed_zero2.yaml` sets for the script.
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    err = parse_error(capsys)
    assert (
        "the accelerate DeepSpeed config needs DeepSpeed, which is not installed: pip install -e .[deepspeed]"
        in err
    )


def test_deepspeed_config_parses_when_deepspeed_is_installed(deepspeed_config: str) -> None:
    pytest.importorskip("deepspeed")
    training_args = parse_recipe_args(["--output_dir", "unused", "--deepspeed", deepspeed_config])[2]
    assert training_args.deepspeed_plugin is not None


def test_recipe_reports_a_config_error_before_loading_anything(tmp_path: Path) -> None:
    result = run_recipe_subprocess(
        "docvqa.py", "--config", str(SMOKE_YAML), "--output_dir", str(tmp_path / "out"),
        "--model_name_or_path", str(tmp_path / "no-model"), "--dataset_name", str(tmp_path / "no-data"),
        "--fp16", "true", "--torch_dtype", "bfloat16",
    )  # fmt: skip
    assert result.returncode != 0  # the launcher reports any failure of the script as 1
    assert "Traceback" not in result.stderr + result.stdout
    (line,) = result.stderr.strip().splitlines()
    assert "fp16 with torch_dtype=bfloat16" in line
    assert (
        not (tmp_path / "no-model").exists() and not (tmp_path / "out").exists()
    )  # nothing built or written
