"""Checkpoint folders of a run: which one to resume from, which are complete, and never losing one."""

from __future__ import annotations

import json
import logging
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

    `--resume_from_checkpoint true` takes the newest *complete* checkpoint: one cut off by a crash while it
    was being written is moved to `incomplete-checkpoints/` first (the Trainer would otherwise pick it, and
    would write into it again later). The main process goes first, so the others see the folder it left.
    """
    with training_args.main_process_first(local=training_args.save_on_each_node, desc="checking checkpoints"):
        return _resolve_checkpoint(training_args)


def _resolve_checkpoint(training_args: FlorenceTrainingArguments) -> str | None:
    output_dir = Path(training_args.output_dir)
    resume = training_args.resume_from_checkpoint
    checkpoints = _checkpoints(output_dir)
    if resume is not None and str(resume).lower() in ("true", "latest"):
        while checkpoints and not is_complete_checkpoint(checkpoints[-1]):
            _set_aside_incomplete(checkpoints.pop())
        if not checkpoints:
            raise RecipeError(
                f"--resume_from_checkpoint true: no complete checkpoint-* folder in {output_dir}"
            )
        return str(checkpoints[-1])
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
