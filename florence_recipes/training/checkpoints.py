"""Checkpoint folders of a run: which one to resume from, which are complete, and never losing one."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import time
from pathlib import Path

from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from florence_recipes.configs.training import FlorenceTrainingArguments
from florence_recipes.errors import RecipeError

logger = logging.getLogger(__name__)


def resolve_checkpoint(training_args: FlorenceTrainingArguments) -> str | None:
    """Checkpoint to resume from; refuses to silently train over an output_dir that holds checkpoints.

    `--resume_from_checkpoint true` takes the newest *complete* checkpoint, `auto` too but starts from scratch
    when there is none (a requeued job runs the same command line as the first). Checkpoints cut off by a crash
    while they were being written are moved to `incomplete-checkpoints/` first, one line each (the Trainer
    would otherwise pick one, and write into it again later). The main process goes first, so the others see
    the folder it left.
    """
    with training_args.main_process_first(local=training_args.save_on_each_node, desc="checking checkpoints"):
        return _resolve_checkpoint(training_args)


def _resolve_checkpoint(training_args: FlorenceTrainingArguments) -> str | None:
    output_dir = Path(training_args.output_dir)
    resume = training_args.resume_from_checkpoint
    checkpoints = _checkpoints(output_dir)
    keyword = str(resume).lower()
    if keyword in ("true", "latest", "auto"):
        for checkpoint in [path for path in checkpoints if not is_complete_checkpoint(path)]:
            _set_aside_incomplete(checkpoint)
            checkpoints.remove(checkpoint)
        if checkpoints:
            return str(checkpoints[-1])
        if keyword == "auto":
            logger.info(
                "--resume_from_checkpoint auto: no checkpoint in %s yet, starting from scratch", output_dir
            )
            return None
        raise RecipeError(f"--resume_from_checkpoint true: no complete checkpoint-* folder in {output_dir}")
    if resume is not None:
        if not Path(resume).is_dir():
            raise RecipeError(f"--resume_from_checkpoint: {resume} is not a folder")
        if not is_complete_checkpoint(Path(resume)):
            raise RecipeError(
                f"--resume_from_checkpoint: {resume} has no readable {TRAINER_STATE_NAME}: it was cut off while "
                "being written; resume from an earlier checkpoint"
            )
        return str(resume)
    if checkpoints and training_args.do_train:
        if not training_args.overwrite_output_dir:
            raise RecipeError(
                f"{output_dir} already holds checkpoints (latest: {checkpoints[-1].name}); resume with "
                "--resume_from_checkpoint true, or start over with --overwrite_output_dir true "
                "(old checkpoints are moved aside, not deleted)"
            )
        _move_old_checkpoints(output_dir)
    return None


def _checkpoints(output_dir: Path) -> list[Path]:
    """`checkpoint-<step>` folders of `output_dir`, oldest step first."""
    if not output_dir.is_dir():
        return []
    steps = {
        path: int(path.name.rsplit("-", 1)[1])
        for path in output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*")
        if path.is_dir() and path.name.rsplit("-", 1)[1].isdigit()
    }
    return sorted(steps, key=steps.__getitem__)


def is_complete_checkpoint(checkpoint: Path) -> bool:
    """True if the Trainer finished writing `checkpoint`: it writes trainer_state.json last, after the
    weights, optimizer, scheduler and RNG states."""
    try:
        json.loads((checkpoint / TRAINER_STATE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def last_complete_checkpoint(output_dir: str | Path) -> str | None:
    complete = [path for path in _checkpoints(Path(output_dir)) if is_complete_checkpoint(path)]
    return str(complete[-1]) if complete else None


def _set_aside_incomplete(checkpoint: Path) -> None:
    archive = checkpoint.parent / "incomplete-checkpoints"
    archive.mkdir(exist_ok=True)
    target = archive / f"{checkpoint.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    shutil.move(str(checkpoint), target)
    logger.warning("%s was cut off while being written; moved it to %s (safe to delete)", checkpoint, target)


def _move_old_checkpoints(output_dir: Path) -> None:
    # Keep the user's previous run: the Trainer's checkpoint rotation would otherwise delete it.
    archive = output_dir / f"previous-run-{time.strftime('%Y%m%d-%H%M%S')}"
    archive.mkdir()
    for checkpoint in output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        shutil.move(str(checkpoint), archive / checkpoint.name)
    logger.warning("--overwrite_output_dir: moved existing checkpoints to %s", archive)


def sync_to_disk(folder: str | Path) -> None:
    """fsync `folder` and every file in it: what this node wrote is on disk before the checkpoint's completion
    marker (trainer_state.json) is written, so a node lost right after cannot leave a "complete" checkpoint
    whose weights were still in its page cache."""
    folder = Path(folder)
    for path in [*sorted(folder.rglob("*")), folder]:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        except OSError:
            if not path.is_dir():  # some filesystems refuse to fsync a directory (EINVAL); its files matter
                raise
        finally:
            os.close(descriptor)


def out_of_space_error(
    error: BaseException, checkpoint: Path, previous: str | None, weights_bytes: int
) -> RecipeError | None:
    """The one-line error for a checkpoint save that failed for lack of space, else None.

    Out of space means ENOSPC somewhere in the exception chain, or, since `torch.save` reports a full disk as
    a bare "unexpected pos" RuntimeError, a device left with less free space than the checkpoint needs. The
    need is the previous complete checkpoint's size, or without one the weights plus Adam's two moments.
    """
    if previous is not None:
        needed, basis = _folder_bytes(previous), f"the size of {Path(previous).name}"
    else:
        needed, basis = 3 * weights_bytes, "weights + Adam's two moments"
    free = shutil.disk_usage(checkpoint.parent).free
    if not (_says_out_of_space(error) or free < needed):
        return None
    kept = f"{previous} is intact" if previous else "there is no earlier checkpoint"
    return RecipeError(
        f"no space left on the device while saving {checkpoint}: a checkpoint needs about {_size(needed)} "
        f"({basis}), {_size(free)} free; {kept}: free space, then resume with --resume_from_checkpoint auto"
    )


def _folder_bytes(folder: str | Path) -> int:
    return sum(path.stat().st_size for path in Path(folder).rglob("*") if path.is_file())


def _says_out_of_space(error: BaseException | None) -> bool:
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        # safetensors' Rust error carries only the OS message, not an errno.
        if getattr(error, "errno", None) == errno.ENOSPC or os.strerror(errno.ENOSPC) in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def _size(num_bytes: float) -> str:
    units = ("B", "KiB", "MiB", "GiB")
    power = 0
    while num_bytes >= 1024 and power < len(units) - 1:
        num_bytes /= 1024
        power += 1
    return f"{num_bytes:.1f} {units[power]}"
