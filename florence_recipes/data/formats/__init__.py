"""The dataset layouts of other Florence-2 tools, read as they are: each is a converter feeding an existing task,
so the collator, trainer, metrics and bad-sample policy are the ones every task uses.

| format    | layout                                                              | task                       |
|-----------|---------------------------------------------------------------------|----------------------------|
| `maestro` | `{train,valid,test}/annotations.jsonl` rows `{image, prefix, suffix}` | `detection` for `<OD>` rows, else `vqa` |
| `coco`    | Roboflow `{train,valid,test}/_annotations.coco.json`, or `annotations/instances_<split>.json` | `detection` |
| `llava`   | a `.json` / `.jsonl` of `{image, conversations}`                      | `vqa` (one row per turn)   |

`dataset_format: auto` (the default) detects them from `dataset_name` in this order; anything else local must be
what `datasets.load_dataset` reads (`datasets`: your own rows, imagefolder, a Hub layout), or the run fails with
one line listing the recognised layouts. A format implies its task (`data_sources` checks it against `task`).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from datasets import Dataset
from datasets.arrow_reader import ReadInstruction

from florence_recipes.data.formats import coco, llava, maestro
from florence_recipes.data.formats.common import Format, FormatSplit
from florence_recipes.errors import RecipeError, first_line

logger = logging.getLogger(__name__)

FORMATS: dict[str, Format] = {fmt.name: fmt for fmt in (maestro.FORMAT, coco.FORMAT, llava.FORMAT)}
DATASETS_LAYOUT = (
    "datasets: what datasets.load_dataset reads ({split}.jsonl / .parquet rows, imagefolder, a Hub layout)"
)
# Files `datasets.load_dataset` can build a dataset from: a local folder holding none is no layout we know.
_DATA_SUFFIXES = frozenset({".jsonl", ".json", ".parquet", ".csv", ".arrow", ".txt", ".py"})


def recognised_layouts() -> str:
    return "; ".join([f"{name}: {fmt.layout}" for name, fmt in FORMATS.items()] + [DATASETS_LAYOUT])


def _has_data_files(folder: Path) -> bool:
    return any(path.suffix in _DATA_SUFFIXES for path in folder.rglob("*") if path.is_file())


def resolve_format(dataset_name: str, dataset_format: str) -> Format | None:
    """The format `dataset_name` is read with; None: `datasets.load_dataset` (your own rows, a Hub dataset)."""
    if dataset_format == "datasets":
        return None
    path = Path(dataset_name).expanduser()
    if dataset_format != "auto":
        fmt = FORMATS[dataset_format]
        if not fmt.detect(path):
            raise RecipeError(
                f"dataset_format {fmt.name}: {dataset_name} is not in that layout ({fmt.layout}); recognised "
                f"layouts: {recognised_layouts()}"
            )
        return fmt
    found = next((fmt for fmt in FORMATS.values() if fmt.detect(path)), None)
    if found is None and path.is_dir() and not _has_data_files(path):
        raise RecipeError(
            f"{dataset_name}: unrecognised dataset layout; recognised layouts: {recognised_layouts()}"
        )
    if found is not None:
        logger.info("%s: read as the %s layout (dataset_format: auto)", dataset_name, found.name)
    return found


@functools.lru_cache(maxsize=16)
def read_format_split(name: str, dataset_name: str, split: str, skip_bad_images: bool) -> FormatSplit:
    """One whole split (no slice) of `dataset_name` in format `name`, read once per process: its task decides
    the run's task and its counts go to all_results.json after the rows were loaded."""
    part = FORMATS[name].read(Path(dataset_name).expanduser().absolute(), split, skip_bad_images)
    reported = {reason: count for reason, count in part.counts.items() if count}
    if reported:
        logger.warning(
            "%s (%s): %s", part.file, split, ", ".join(f"{k} {v}" for k, v in sorted(reported.items()))
        )
    return part


def implied_task(fmt: Format, dataset_name: str, split: str, skip_bad_images: bool) -> str:
    """The task a format feeds: fixed, or (maestro) decided by the rows of `split`."""
    if fmt.task is not None:
        return fmt.task
    return read_format_split(fmt.name, dataset_name, _base_split(split), skip_bad_images).task


def _base_split(split: str) -> str:
    return split.split("[", 1)[0].strip()


def format_rows(name: str, dataset_name: str, split: str, task: str, skip_bad_images: bool) -> Dataset:
    """`split` (`datasets` slicing allowed: train[:90%]) as rows of `task`, image paths absolute."""
    base = _base_split(split)
    part = read_format_split(name, dataset_name, base, skip_bad_images)
    if not part.rows:
        raise RecipeError(
            f"{part.file}: no usable rows ({', '.join(f'{k} {v}' for k, v in part.counts.items() if v)})"
        )
    if part.task != task:
        raise RecipeError(
            f"{part.file}: holds {part.task} rows, but the run's task is {task} (from the train split)"
        )
    rows = Dataset.from_list(part.rows)
    if base == split.strip():
        return rows
    try:
        instructions = ReadInstruction.from_spec(split).to_absolute({base: len(rows)})
    except (ValueError, AssertionError) as err:
        raise RecipeError(f"split {split!r}: {first_line(err)}") from None
    if len(instructions) != 1:
        raise RecipeError(f"split {split!r}: give one split or one slice of it, e.g. train[:90%]")
    return rows.select(range(instructions[0].from_, instructions[0].to))


def format_counts(name: str, dataset_name: str, split: str, skip_bad_images: bool) -> dict[str, int]:
    """What reading `split` skipped or changed, per reason (every reason the format counts, zeros included)."""
    part = read_format_split(name, dataset_name, _base_split(split), skip_bad_images)
    return {reason: part.counts.get(reason, 0) for reason in FORMATS[name].counts}


__all__ = [
    "FORMATS",
    "Format",
    "FormatSplit",
    "format_counts",
    "format_rows",
    "implied_task",
    "resolve_format",
]
