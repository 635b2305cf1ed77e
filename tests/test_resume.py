"""Crashes lose nothing: a run SIGKILLed several times and resumed each time ends exactly where an
uninterrupted run ends, and an output_dir with checkpoints is never trained over without being asked."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, SMOKE_YAML, recipe_command, run_recipe_subprocess
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from florence_recipes.configs.parser import parse_recipe_args
from florence_recipes.errors import RecipeError
from florence_recipes.training.checkpoints import (
    is_complete_checkpoint,
    last_complete_checkpoint,
    resolve_checkpoint,
)

MAX_STEPS, SAVE_STEPS = 36, 4  # 6 batches of 8 per epoch: checkpoints fall mid-epoch too
KILLS = 2  # a kill of a fresh run and one of a resumed run (each launch costs ~15 s of imports)
VOLATILE = ("runtime", "per_second")  # timings, not results


def smoke_args(tiny_model_dir: Path, docvqa_dir: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        "--config", str(SMOKE_YAML), "--model_name_or_path", str(tiny_model_dir),
        "--dataset_name", str(docvqa_dir), "--build_offline_fixtures", "false", "--output_dir", str(output_dir),
        "--max_steps", str(MAX_STEPS), "--save_strategy", "steps", "--save_steps", str(SAVE_STEPS),
        "--save_total_limit", "100", "--eval_strategy", "no", "--logging_steps", "1", *extra,
    ]  # fmt: skip


def checkpoint_steps(output_dir: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in output_dir.glob("checkpoint-*"))


def kill_after_checkpoint(command: list[str], output_dir: Path, step: int, delay: float) -> None:
    """Start `command`, and SIGKILL its whole process group (launcher, trainer, DataLoader workers) `delay`
    seconds after the folder of checkpoint `step` appears: often while that checkpoint is being written."""
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    deadline = time.monotonic() + 300
    while not (output_dir / f"checkpoint-{step}").exists():
        if process.poll() is not None:
            raise AssertionError(
                f"run ended before checkpoint-{step}: {process.stderr.read().decode()[-3000:]}"
            )
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            raise AssertionError(f"no checkpoint-{step} after 300 s")
        time.sleep(0.02)
    time.sleep(delay)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    process.stderr.close()


def results(output_dir: Path) -> tuple[dict, list[dict]]:
    """Final eval metrics and the per-step training log, without timings."""
    evaluation = json.loads((output_dir / "eval_results.json").read_text())
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    steps = [entry for entry in history if "loss" in entry]
    return {k: v for k, v in evaluation.items() if not any(word in k for word in VOLATILE)}, steps


def test_killed_and_resumed_run_matches_an_uninterrupted_one(
    dropout_model_dir: Path, docvqa_dir: Path, tmp_path: Path
) -> None:
    baseline, resumed = tmp_path / "baseline", tmp_path / "resumed"
    result = run_recipe_subprocess("docvqa.py", *smoke_args(dropout_model_dir, docvqa_dir, baseline))
    assert result.returncode == 0, result.stderr[-3000:]

    rng = random.Random()
    # From the second checkpoint on: by then the first one is complete, so there is always one to resume from.
    kills = sorted(rng.sample(range(2 * SAVE_STEPS, MAX_STEPS - SAVE_STEPS, SAVE_STEPS), KILLS))
    delays = [0.0] + [rng.uniform(0.0, 0.3) for _ in kills[1:]]  # 0: usually while the checkpoint is written
    context = f"killed after checkpoints {kills} with delays {[round(d, 2) for d in delays]}"
    command = recipe_command("docvqa.py", *smoke_args(dropout_model_dir, docvqa_dir, resumed))
    for number, (step, delay) in enumerate(zip(kills, delays, strict=True)):
        kill_after_checkpoint(
            command + (["--resume_from_checkpoint", "true"] if number else []), resumed, step, delay
        )
    result = run_recipe_subprocess(
        "docvqa.py", *smoke_args(dropout_model_dir, docvqa_dir, resumed, "--resume_from_checkpoint", "true")
    )
    assert result.returncode == 0, f"{context}: {result.stderr[-3000:]}"

    expected, got = load_file(baseline / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert expected.keys() == got.keys()
    different = [name for name in expected if not torch.equal(expected[name], got[name])]
    assert not different, f"{context}: {len(different)} tensors differ, e.g. {different[:3]}"
    assert results(resumed) == results(baseline), context
    assert len(results(resumed)[1]) == MAX_STEPS

    # Every checkpoint left on disk is complete and loads; cut-off ones were set aside, not resumed from.
    assert checkpoint_steps(resumed) == list(range(SAVE_STEPS, MAX_STEPS + 1, SAVE_STEPS))
    for checkpoint in resumed.glob("checkpoint-*"):
        assert is_complete_checkpoint(checkpoint), checkpoint
        AutoModelForImageTextToText.from_pretrained(checkpoint)
    for incomplete in (resumed / "incomplete-checkpoints").glob("*"):
        assert not is_complete_checkpoint(incomplete), incomplete


# --- choosing the checkpoint -------------------------------------------------------------------------------


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """An output_dir with complete checkpoints 2 and 4 (as the Trainer leaves them) and one cut off at 6."""
    for step in (2, 4, 6):
        checkpoint = tmp_path / f"checkpoint-{step}"
        checkpoint.mkdir()
        (checkpoint / "model.safetensors").write_bytes(b"weights")
        if step != 6:
            (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return tmp_path


def resolve(output_dir: Path, *flags: str) -> str | None:
    return resolve_checkpoint(
        parse_recipe_args(["--output_dir", str(output_dir), "--do_train", "true", *flags])[2]
    )


def test_resume_true_takes_the_newest_complete_checkpoint(run_dir: Path) -> None:
    assert resolve(run_dir, "--resume_from_checkpoint", "true") == str(run_dir / "checkpoint-4")
    assert not (run_dir / "checkpoint-6").exists()  # set aside: the Trainer would pick it, then write into it
    (moved,) = (run_dir / "incomplete-checkpoints").iterdir()
    assert moved.name.startswith("checkpoint-6-") and (moved / "model.safetensors").read_bytes() == b"weights"
    assert last_complete_checkpoint(run_dir) == str(run_dir / "checkpoint-4")


def test_a_checkpoint_with_a_truncated_state_file_is_incomplete(run_dir: Path) -> None:
    (run_dir / "checkpoint-4" / "trainer_state.json").write_text('{"global_st')
    assert resolve(run_dir, "--resume_from_checkpoint", "true") == str(run_dir / "checkpoint-2")


def test_resuming_from_an_incomplete_checkpoint_path_is_refused(run_dir: Path) -> None:
    with pytest.raises(RecipeError, match=r"checkpoint-6 has no readable trainer_state\.json"):
        resolve(run_dir, "--resume_from_checkpoint", str(run_dir / "checkpoint-6"))


def test_output_dir_with_checkpoints_needs_an_explicit_choice(run_dir: Path) -> None:
    with pytest.raises(RecipeError) as refused:
        resolve(run_dir)
    message = str(refused.value)
    assert "--resume_from_checkpoint true" in message and "--overwrite_output_dir true" in message
    assert len(message.splitlines()) == 1
    assert checkpoint_steps(run_dir) == [2, 4, 6]  # nothing touched


def test_overwrite_moves_old_checkpoints_aside(run_dir: Path) -> None:
    assert resolve(run_dir, "--overwrite_output_dir", "true") is None
    assert checkpoint_steps(run_dir) == []
    (archive,) = run_dir.glob("previous-run-*")
    assert sorted(p.name for p in archive.iterdir()) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]


def test_resume_true_without_checkpoints_fails(tmp_path: Path) -> None:
    shutil.rmtree(tmp_path)
    with pytest.raises(RecipeError, match="no complete checkpoint-\\* folder"):
        resolve(tmp_path, "--resume_from_checkpoint", "true")
