"""Faults from outside lose nothing (docs/faults.md): a signal saves a checkpoint and stops the run with exit
code 75, and the same command (`--resume_from_checkpoint auto`) then ends bit-identical to an uninterrupted
run; a kill -9 during a checkpoint write never leaves a checkpoint that resume would take; a full disk keeps
the previous checkpoint intact. In the slow suite: the same under DDP with the signal sent to one process only,
torchrun passing a SIGTERM on to its workers, and ten kills during checkpoint writes. The Slurm requeue is
tested in tests/test_distributed.py, with the other launch.slurm tests.

The runs print what they measured on lines starting with "fault figures:" (`pytest -s` shows them).
"""

from __future__ import annotations

import errno
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from conftest import REPO_ROOT, SMOKE_YAML, recipe_command, sources_of
from safetensors.torch import load_file
from test_distributed import DDP, launcher
from test_resume import results
from transformers import AutoModelForImageTextToText, AutoProcessor

from florence_recipes.configs.parser import parse_recipe_args
from florence_recipes.errors import RecipeError
from florence_recipes.training.callbacks import SAVED_ON_SIGNAL_EXIT_CODE
from florence_recipes.training.checkpoints import (
    is_complete_checkpoint,
    last_complete_checkpoint,
    resolve_checkpoint,
)
from florence_recipes.training.trainer import EXIT_CODE_FILE_ENV, FlorenceTrainer

MAX_STEPS, SAVE_STEPS = 16, 4  # 6 batches of 8 per epoch: a signal after step 8 stops mid-epoch
EXIT_DEADLINE = 60.0  # seconds from the signal to the exit; here a step takes ~0.3 s and a save ~0.2 s
SAVED_LINE = re.compile(r"- ([^-:]+): saved (\S+) at step (\d+), .*exiting with code 75")  # the one line


def fault_args(model_dir: Path, data_dir: Path, output_dir: Path, *extra: str) -> list[str]:
    """The smoke recipe: `MAX_STEPS` steps, a checkpoint every `SAVE_STEPS`, resumed by `auto` if it can."""
    return [
        "--config", str(SMOKE_YAML), "--model_name_or_path", str(model_dir), "--dataset_name", str(data_dir),
        "--build_offline_fixtures", "false", "--output_dir", str(output_dir), "--max_steps", str(MAX_STEPS),
        "--save_strategy", "steps", "--save_steps", str(SAVE_STEPS), "--save_total_limit", "2",
        "--eval_strategy", "no", "--logging_steps", "1", "--resume_from_checkpoint", "auto", *extra,
    ]  # fmt: skip


def recipe(*args: str) -> list[str]:
    """The DocVQA recipe in this Python, without a launcher: its own exit code comes back."""
    return [sys.executable, str(REPO_ROOT / "recipes" / "docvqa.py"), *args]


def run_ok(command: list[str]) -> None:
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]


def start(command: list[str], log: Path, **env: str) -> subprocess.Popen:
    """Start `command` in a session of its own, its output (logs go to stdout) into `log`."""
    with log.open("a") as output:
        return subprocess.Popen(
            command, cwd=REPO_ROOT, env=os.environ | env, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"the run ended before {path.name} appeared"
        assert time.monotonic() < deadline, f"no {path.name} after {timeout} s"
        time.sleep(0.005)


def same_run(baseline: Path, resumed: Path, context: str = "") -> None:
    """Bit-identical final weights, eval metrics and per-step training log."""
    expected, got = load_file(baseline / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert expected.keys() == got.keys()
    different = [name for name in expected if not torch.equal(expected[name], got[name])]
    assert not different, f"{context}: {len(different)} tensors differ, e.g. {different[:3]}"
    assert results(resumed) == results(baseline), context
    assert len(results(resumed)[1]) == MAX_STEPS, context


def test_a_signal_saves_stops_and_the_same_command_resumes_bit_identically(
    dropout_model_dir: Path, docvqa_dir: Path, tmp_path: Path
) -> None:
    """SIGUSR1 arrives as checkpoint-8 is being written; SIGTERMs keep coming while the run saves its own
    checkpoint. It stops after the next step (mid-epoch), exits 75 within the deadline, and resumes exactly."""
    baseline, resumed = tmp_path / "baseline", tmp_path / "resumed"
    run_ok(recipe(*fault_args(dropout_model_dir, docvqa_dir, baseline)))

    log = tmp_path / "signalled.log"
    process = start(recipe(*fault_args(dropout_model_dir, docvqa_dir, resumed)), log)
    wait_for(resumed / "checkpoint-8", process)
    process.send_signal(signal.SIGUSR1)
    signalled, during_save, after_save = time.monotonic(), 0, 0
    # SIGTERMs from the moment the run starts saving on the signal until it exits.
    while process.poll() is None:
        if saving := [path for path in resumed.glob("checkpoint-*") if int(path.name.split("-")[1]) > 8]:
            process.send_signal(signal.SIGTERM)
            complete = is_complete_checkpoint(saving[0])
            during_save, after_save = during_save + (not complete), after_save + complete
        time.sleep(0.02)
    latency = time.monotonic() - signalled
    output = log.read_text()
    assert process.returncode == SAVED_ON_SIGNAL_EXIT_CODE, output[-3000:]
    assert latency < EXIT_DEADLINE
    (line,) = [line for line in output.splitlines() if SAVED_LINE.search(line)]
    name, checkpoint, step = SAVED_LINE.search(line).groups()
    assert name == "SIGUSR1" and 8 < int(step) < MAX_STEPS and int(step) % SAVE_STEPS != 0
    assert is_complete_checkpoint(Path(checkpoint)) and Path(checkpoint).parent == resumed
    assert during_save == 0 or "later signal(s) ignored" in line  # counted until training ends, then SIG_IGN
    assert not (resumed / "model.safetensors").exists()  # no final model: the run is not finished

    run_ok(recipe(*fault_args(dropout_model_dir, docvqa_dir, resumed)))  # the very same command
    same_run(baseline, resumed)
    print(
        f"fault figures: SIGUSR1 then {during_save} SIGTERM during the save and {after_save} after it; stopped at "
        f"step {step}, exit {latency:.1f} s after SIGUSR1, resume bit-identical"
    )


@pytest.mark.slow
def test_kill_9_during_checkpoint_writes_never_breaks_resume(
    dropout_model_dir: Path, docvqa_dir: Path, tmp_path: Path
) -> None:
    """Ten kill -9s of the whole process group, each 0-0.05 s after a checkpoint's folder appears (mostly while
    it is written), each followed by the same command: resume always finds a complete checkpoint, and the
    run ends exactly as the uninterrupted one."""
    kills, baseline, resumed = 10, tmp_path / "baseline", tmp_path / "resumed"
    run_ok(recipe(*fault_args(dropout_model_dir, docvqa_dir, baseline)))
    command = recipe(*fault_args(dropout_model_dir, docvqa_dir, resumed, "--save_steps", "1"))
    rng, during_save, files_at_kill = random.Random(), 0, []
    for _ in range(kills):  # at most two steps of progress per kill: 10 kills end before the last step
        done = last_complete_checkpoint(resumed)
        # The next checkpoint or the one after (the run then completes one on its way); with save_total_limit 2,
        # a kill just after a write lands while rotation deletes an older checkpoint.
        step = max(int(done.rsplit("-", 1)[1]) + 1 + rng.randrange(2) if done else 0, 2)
        target = resumed / f"checkpoint-{min(step, MAX_STEPS - 1)}"
        process = start(command, tmp_path / "killed.log")
        wait_for(target, process)
        time.sleep(rng.uniform(0.0, 0.05))  # a tiny checkpoint takes ~0.03-0.3 s to write here (with fsync)
        os.killpg(process.pid, signal.SIGKILL)  # the process and its DataLoader workers, as a lost node
        files_at_kill.append(f"{target.name}: {len(list(target.iterdir()))}")
        process.wait()
        during_save += not is_complete_checkpoint(target)
        assert resolve_checkpoint(parse_recipe_args(command[2:])[2]) is not None  # resume has one to take
    run_ok(command)
    same_run(baseline, resumed, f"{kills} kills, {during_save} during a checkpoint write")
    print(
        f"fault figures: kill -9 {kills}, of which during a checkpoint write {during_save} (files in the folder by "
        f"then, of {len(list(next(baseline.glob('checkpoint-*')).iterdir()))}: {files_at_kill}), resume bit-identical"
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("launcher_args", "backend"),
    [(DDP, ("--use_cpu", "true")), (launcher("deepspeed_zero2.yaml"), ("--ddp_backend", "gloo"))],
    ids=["ddp", "zero2"],
)
def test_ddp_stops_together_when_one_process_gets_the_signal(
    dropout_model_dir: Path,
    docvqa_dir: Path,
    tmp_path: Path,
    launcher_args: tuple[str, ...],
    backend: tuple[str, ...],
) -> None:
    """2 processes (DDP, or DeepSpeed ZeRO-2, over gloo); SIGUSR1 reaches rank 1 only (as a node-local warning
    would). Both stop after the same step, the checkpoint holds both RNG states, and the same command resumes
    bit-identically."""
    baseline, resumed = tmp_path / "baseline", tmp_path / "resumed"
    ddp = (*backend, "--dataloader_num_workers", "0", "--per_device_train_batch_size", "4")
    run_ok(
        recipe_command(
            "docvqa.py",
            *fault_args(dropout_model_dir, docvqa_dir, baseline, *ddp),
            launcher_args=launcher_args,
        )
    )

    command = recipe_command(
        "docvqa.py", *fault_args(dropout_model_dir, docvqa_dir, resumed, *ddp), launcher_args=launcher_args
    )
    exit_code_file = tmp_path / "exit-code"
    launcher = start(command, tmp_path / "signalled.log", **{EXIT_CODE_FILE_ENV: str(exit_code_file)})
    wait_for(resumed / "checkpoint-8" / "trainer_state.json", launcher)
    (rank1,) = [
        child for child in psutil.Process(launcher.pid).children(recursive=True)
        if child.environ().get("RANK") == "1" and "docvqa.py" in " ".join(child.cmdline())
    ]  # fmt: skip
    rank1.send_signal(signal.SIGUSR1)
    signalled = time.monotonic()
    launcher.wait(timeout=600)
    latency = time.monotonic() - signalled
    output = (tmp_path / "signalled.log").read_text()
    assert launcher.returncode == 1, output[-3000:]  # accelerate/torchrun report any failed worker as 1
    assert exit_code_file.read_text().strip() == str(SAVED_ON_SIGNAL_EXIT_CODE)
    # Rank 0 never got the signal, yet saved with rank 1: they agreed on the step.
    (line,) = [line for line in output.splitlines() if SAVED_LINE.search(line)]
    assert SAVED_LINE.search(line).group(1) == "a signal to another process"
    checkpoint = Path(SAVED_LINE.search(line).group(2))
    assert is_complete_checkpoint(checkpoint)
    assert {path.name for path in checkpoint.glob("rng_state_*.pth")} == {
        "rng_state_0.pth",
        "rng_state_1.pth",
    }

    run_ok(
        recipe_command(
            "docvqa.py",
            *fault_args(dropout_model_dir, docvqa_dir, resumed, *ddp),
            launcher_args=launcher_args,
        )
    )
    same_run(baseline, resumed, launcher_args[1])
    print(
        f"fault figures: {Path(launcher_args[1]).name}, SIGUSR1 to rank 1, both stopped at {checkpoint.name}, "
        f"launcher exit {latency:.1f} s later"
    )


@pytest.mark.slow
def test_torchrun_passes_sigterm_on_to_its_workers(
    dropout_model_dir: Path, docvqa_dir: Path, tmp_path: Path
) -> None:
    """Kubernetes signals only the container's PID 1: here the launcher (accelerate -> torchrun's agent). The
    agent sends SIGTERM on to both workers, which save and stop; the launcher itself reports 143."""
    ddp = ("--use_cpu", "true", "--dataloader_num_workers", "0", "--per_device_train_batch_size", "4")
    out, exit_code_file = tmp_path / "run", tmp_path / "exit-code"
    command = recipe_command(
        "docvqa.py", *fault_args(dropout_model_dir, docvqa_dir, out, *ddp), launcher_args=DDP
    )
    launcher = start(command, tmp_path / "run.log", **{EXIT_CODE_FILE_ENV: str(exit_code_file)})
    wait_for(out / "checkpoint-8" / "trainer_state.json", launcher)
    launcher.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    assert launcher.wait(timeout=600) == 128 + signal.SIGTERM
    latency = time.monotonic() - signalled
    assert exit_code_file.read_text().strip() == str(SAVED_ON_SIGNAL_EXIT_CODE)
    (line,) = [line for line in (tmp_path / "run.log").read_text().splitlines() if SAVED_LINE.search(line)]
    name, checkpoint, _ = SAVED_LINE.search(line).groups()
    assert name == "SIGTERM" and is_complete_checkpoint(Path(checkpoint))
    assert len(list(Path(checkpoint).glob("rng_state_*.pth"))) == 2
    print(
        f"fault figures: SIGTERM to torchrun only, workers saved {Path(checkpoint).name}, exit {latency:.1f} s later"
    )


# --- a full disk ---------------------------------------------------------------------------------------------


def train_in_process(tiny_model_dir: Path, train_rows, output_dir: Path) -> FlorenceTrainer:
    """4 steps of the tiny model, a checkpoint after every step; returns the trainer (trained or not)."""
    _, _, training_args = parse_recipe_args(
        [
            "--model_name_or_path", str(tiny_model_dir), "--output_dir", str(output_dir), "--max_steps", "4",
            "--per_device_train_batch_size", "2", "--save_strategy", "steps", "--save_steps", "1",
            "--save_total_limit", "1", "--dataloader_num_workers", "0", "--report_to", "none",
            "--disable_tqdm", "true", "--resume_from_checkpoint", "auto",
        ]
    )  # fmt: skip
    trainer = FlorenceTrainer(
        model=AutoModelForImageTextToText.from_pretrained(tiny_model_dir),
        args=training_args,
        processor=AutoProcessor.from_pretrained(tiny_model_dir),
        sources=sources_of("docvqa"),
        train_dataset=train_rows.select(range(8)),
    )
    trainer.train(resume_from_checkpoint=resolve_checkpoint(training_args))
    return trainer


def check_full_disk(error: RecipeError, output_dir: Path, step: int) -> None:
    """One line naming the folder and the space, the previous checkpoint intact, and resume takes it."""
    message = str(error)
    assert len(message.splitlines()) == 1
    assert f"while saving {output_dir / f'checkpoint-{step}'}: a checkpoint needs about " in message
    assert f"{output_dir / f'checkpoint-{step - 1}'} is intact" in message
    previous = output_dir / f"checkpoint-{step - 1}"
    assert is_complete_checkpoint(previous) and not is_complete_checkpoint(output_dir / f"checkpoint-{step}")
    AutoModelForImageTextToText.from_pretrained(previous)
    args = parse_recipe_args(["--output_dir", str(output_dir), "--resume_from_checkpoint", "auto"])[2]
    assert resolve_checkpoint(args) == str(previous)
    print(f"fault figures: full disk: {message}")


def test_a_full_disk_stops_with_one_line_and_keeps_the_previous_checkpoint(
    tiny_model_dir: Path, train_rows, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The optimizer state of checkpoint-3 hits ENOSPC (a patched torch.save)."""
    save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if str(f).endswith("checkpoint-3/optimizer.pt"):
            Path(f).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(RecipeError) as stopped:
        train_in_process(tiny_model_dir, train_rows, tmp_path)
    check_full_disk(stopped.value, tmp_path, step=3)


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    """A 12 MiB tmpfs (a tiny checkpoint takes 8.3 MiB, so the second does not fit); skipped without the right
    to mount (root in a container here, rarely in CI)."""
    folder = tmp_path / "tmpfs"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(folder)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", "--lazy", str(folder)], check=True)  # a loaded model may still map a file


def test_a_really_full_disk_keeps_the_previous_checkpoint(
    tiny_model_dir: Path, train_rows, small_tmpfs: Path
) -> None:
    """The same on a real full filesystem: torch.save then fails with a bare RuntimeError, not ENOSPC."""
    with pytest.raises(RecipeError) as stopped:
        train_in_process(tiny_model_dir, train_rows, small_tmpfs)
    check_full_disk(stopped.value, small_tmpfs, step=2)


# --- the options ---------------------------------------------------------------------------------------------


def test_save_on_signal_names_signals_or_none(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def parsed(value: str) -> str:
        return parse_recipe_args(["--output_dir", str(tmp_path), "--save_on_signal", value])[2].save_on_signal

    assert parse_recipe_args(["--output_dir", str(tmp_path)])[2].save_on_signal == "SIGTERM,SIGUSR1"
    assert parsed("usr2, SIGTERM,sigusr2") == "SIGUSR2,SIGTERM"
    assert parsed("none") == ""
    with pytest.raises(SystemExit):
        parsed("SIGKILL")
    error = capsys.readouterr().err
    assert "save_on_signal: 'SIGKILL' is not a signal a process can catch" in error and error.count("\n") == 1


def test_resume_auto_starts_fresh_or_skips_incomplete_checkpoints(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def resolve() -> str | None:
        args = parse_recipe_args(["--output_dir", str(tmp_path), "--resume_from_checkpoint", "auto"])[2]
        return resolve_checkpoint(args)

    assert resolve() is None  # nothing yet: a first run, not an error
    for step in (1, 2, 4, 6):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if step in (2, 4):  # 1: partly deleted by rotation, 6: cut off while written
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    with caplog.at_level("WARNING"):
        assert resolve() == str(tmp_path / "checkpoint-4")
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    moved = [record.getMessage() for record in caplog.records if "cut off" in record.getMessage()]
    assert len(moved) == 2 and all("incomplete-checkpoints" in line for line in moved)
