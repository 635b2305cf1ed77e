"""What the format readers share: the rows a reader returns, split-name aliases, JSON lines read line by line."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from florence_recipes.data.images import image_size
from florence_recipes.errors import RecipeError, first_line

# Tools name their evaluation split `valid` (Roboflow, maestro) or `val` (COCO's val2017); the recipes' YAMLs
# say `validation`. Any of these names finds the others, so a folder works as its tool wrote it.
_SPLIT_GROUPS = (("validation", "valid", "val"), ("test", "testing"))


def split_names(split: str) -> tuple[str, ...]:
    """`split` first, then the names other tools give the same split."""
    for group in _SPLIT_GROUPS:
        if split in group:
            return (split, *(name for name in group if name != split))
    return (split,)


IMAGE_COUNTS = ("skipped_missing_images", "skipped_unreadable_images")  # see `checked_image`


@dataclass(frozen=True)
class FormatSplit:
    """One split of a tool's dataset, converted to the rows an existing task reads.

    `rows` are that task's columns (`objects` for detection, `prompt` + `answers` for vqa) with absolute image
    paths and an `id` that names the annotation file and line (or image id); `counts` are what the reader
    skipped or changed, per reason, for `all_results.json`.
    """

    task: str
    rows: list[dict[str, Any]]
    counts: dict[str, int]
    file: Path  # the annotation file read


@dataclass(frozen=True)
class Format:
    """A dataset layout another Florence-2 tool writes, and how to read it."""

    name: str
    layout: str  # one line, for the error that lists the recognised layouts
    detect: Callable[[Path], bool]
    read: Callable[[Path, str, bool], FormatSplit]  # (dataset path, base split name, skip bad images) -> rows
    task: str | None  # the task it implies; None: decided by the rows (maestro)
    counts: tuple[str, ...] = ()  # reasons it counts (IMAGE_COUNTS too), reported even when zero


def relative(path: Path, root: Path) -> str:
    """`path` as the user knows it: relative to the dataset folder when inside it."""
    try:
        return str(path.relative_to(root if root.is_dir() else root.parent))
    except ValueError:
        return str(path)


def json_lines(path: Path, root: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; a line that is not a JSON object fails naming it."""
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise RecipeError(
                    f"{relative(path, root)} line {number}: not valid JSON ({err.msg})"
                ) from None
            if not isinstance(row, dict):
                raise RecipeError(
                    f"{relative(path, root)} line {number}: expected a JSON object, got {row!r:.60}"
                )
            yield number, row


def load_json(path: Path, root: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise RecipeError(f"{relative(path, root)} line {err.lineno}: not valid JSON ({err.msg})") from None


def image_path(folder: Path, name: Any, where: str) -> Path:
    """The image a row names, relative to the folder of its annotation file."""
    if not isinstance(name, str) or not name.strip():
        raise RecipeError(f"{where}: `image` must be a file name, got {name!r}")
    return (folder / name).expanduser().absolute()


def checked_image(path: Path, where: str, skip: bool, counts: Counter[str]) -> tuple[int, int] | None:
    """(width, height) of an image file, upright, from its header. A missing or unreadable file fails naming
    `where` (file and line, or image id); with `skip` (on_bad_sample: skip) it is counted and None returned.

    Checked here rather than with the other bad samples because detection targets need the size first.
    """
    try:
        return image_size({"path": str(path), "bytes": None})
    except FileNotFoundError:
        reason, detail = "skipped_missing_images", f"image file not found: {path}"
    except Exception as err:  # decoders of broken files raise OSError, SyntaxError, ValueError, ...
        reason, detail = "skipped_unreadable_images", f"unreadable image {path} ({first_line(err)})"
    if not skip:
        raise RecipeError(
            f"{where}: {detail}; fix the data, or set on_bad_sample: skip to drop and count such rows"
        )
    counts[reason] += 1
    return None


def no_split_error(root: Path, split: str, candidates: list[str]) -> RecipeError:
    return RecipeError(
        f"{root}: no split {split!r} (looked for {', '.join(candidates)}); set train_split / eval_split to one "
        "that exists, or slice one split, e.g. train[:90%] and train[90%:]"
    )
