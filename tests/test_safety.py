"""Safe defaults: no remote code, no unpickled weights unless asked, private Hub repos, and a Hub token that
never reaches a log, a saved file or a model card."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from conftest import SMOKE_YAML, run_recipe_subprocess
from safetensors.torch import load_file

from florence_recipes.configs.parser import parse_recipe_args
from florence_recipes.errors import RecipeError
from florence_recipes.models.loading import load_model
from florence_recipes.training.hub import check_hub_access

TOKEN = "hf_FakeTokenForTests0123456789abcdef"


def test_safe_defaults() -> None:
    model_args, _, training_args = parse_recipe_args(["--output_dir", "unused"])
    assert model_args.trust_remote_code is False
    assert model_args.allow_pickled_weights is False
    assert training_args.hub_private_repo is True


def test_native_checkpoint_loads_without_remote_code(tiny_model_dir: Path) -> None:
    model_args = parse_recipe_args(["--output_dir", "unused", "--model_name_or_path", str(tiny_model_dir)])[0]
    assert type(load_model(model_args)).__module__.startswith("transformers.models.florence2.")


@pytest.fixture
def pickled_checkpoint(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """The tiny model with its weights in a pytorch_model.bin (a pickle) instead of model.safetensors."""
    folder = tmp_path / "bin-only"
    folder.mkdir()
    for file in tiny_model_dir.iterdir():
        if file.suffix != ".safetensors" and file.is_file():
            (folder / file.name).write_bytes(file.read_bytes())
    torch.save(load_file(tiny_model_dir / "model.safetensors"), folder / "pytorch_model.bin")
    return folder


def test_pickled_weights_need_an_explicit_opt_in(pickled_checkpoint: Path) -> None:
    args = ["--output_dir", "unused", "--model_name_or_path", str(pickled_checkpoint)]
    with pytest.raises(RecipeError) as refused:
        load_model(parse_recipe_args(args)[0])
    message = str(refused.value)
    assert len(message.splitlines()) == 1
    assert "only .safetensors weights are loaded; set allow_pickled_weights: true" in message
    model = load_model(parse_recipe_args([*args, "--allow_pickled_weights", "true"])[0])
    assert model.config.model_type == "florence2"


def test_hub_token_is_redacted_from_every_serialisation() -> None:
    training_args = parse_recipe_args(["--output_dir", "unused", "--hub_token", TOKEN])[2]
    for text in (str(training_args), repr(training_args), training_args.to_json_string()):
        assert TOKEN not in text
    assert TOKEN not in str(training_args.to_sanitized_dict())
    buffer = io.BytesIO()
    torch.save(training_args, buffer)  # what the Trainer writes to training_args.bin
    assert TOKEN.encode() not in buffer.getvalue()
    buffer.seek(0)
    assert torch.load(buffer, weights_only=False).hub_token is None
    assert training_args.hub_token == TOKEN  # still there for pushing


def test_hub_access_error_does_not_echo_the_token() -> None:
    training_args = parse_recipe_args(
        ["--output_dir", "unused", "--push_to_hub", "true", "--hub_token", TOKEN]
    )[2]
    with pytest.raises(RecipeError, match="cannot authenticate with the Hugging Face Hub") as refused:
        check_hub_access(training_args)  # HF_HUB_OFFLINE=1 in tests
    assert TOKEN not in str(refused.value)


def test_recipe_never_writes_or_prints_the_token(
    tiny_model_dir: Path, docvqa_dir: Path, tmp_path: Path
) -> None:
    output_dir = tmp_path / "out"
    result = run_recipe_subprocess(
        "docvqa.py", "--config", str(SMOKE_YAML), "--model_name_or_path", str(tiny_model_dir),
        "--dataset_name", str(docvqa_dir), "--build_offline_fixtures", "false", "--output_dir", str(output_dir),
        "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "1", "--dataloader_num_workers", "0",
        "--hub_token", TOKEN, "--log_level", "info",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "hub_token=<HUB_TOKEN>" in result.stdout  # the parameters are logged, redacted
    assert TOKEN not in result.stdout + result.stderr
    files = [path for path in output_dir.rglob("*") if path.is_file()]
    assert {"training_args.bin", "README.md", "all_results.json"} <= {path.name for path in files}
    assert [path for path in files if TOKEN.encode() in path.read_bytes()] == []
