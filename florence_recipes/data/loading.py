"""Loading one source: every dataset becomes the same standard rows.

A source is a Hub dataset (DocVQA, a Cauldron subset, ...), a local folder in a Hub layout or imagefolder
layout (`metadata.jsonl`), or your own `.jsonl` / `.json` / `.parquet` file (or a folder holding
`{split}.jsonl` / `{split}.parquet`, with image paths relative to it). Each is read with the real
`datasets.load_dataset` and converted by its task (`florence_recipes.data.tasks`) to `ROW_FEATURES`, so one
collator, one trainer and one `compute_metrics` serve them all.

Per source (`load_task_split`): read the split -> rename `columns` -> check the task's columns -> resolve
local image paths -> cap the rows -> convert with the task (`datasets.map`, images undecoded) -> images
decode lazily in DataLoader workers. A run's sources (`florence_recipes.data.sources`) are then concatenated
or interleaved by weight.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
from datasets import Dataset, Features, Image, IterableDataset, Value
from datasets import Sequence as SequenceFeature
from datasets.exceptions import DatasetGenerationError

from florence_recipes.data.formats import format_rows
from florence_recipes.data.tasks import SourceContext, Task
from florence_recipes.errors import RecipeError, first_line

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)

# The standard rows every source becomes. Images stay undecoded through `map` (no decode/re-encode); the loaders
# cast them to decoding `Image()` features, so they decode lazily in DataLoader workers.
ROW_FEATURES = Features(
    {
        "id": Value("string"),  # the source's question / row id, for predictions and submissions
        "image": Image(decode=False),
        "image_id": Value("string"),  # groups questions asked about the same picture
        "prompt": Value("string"),
        "target": Value("string"),  # what the model is trained to generate
        "answers": SequenceFeature(Value("string")),  # every gold answer, for scoring
        "tags": SequenceFeature(Value("string")),  # e.g. DocVQA question_types, for per-type metrics
        "source": Value("string"),  # task / subset name, for per-source metrics in mixtures
    }
)

_LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
# What a streamed split may be: a whole split or a row range (a stream has no length, so no percentages).
_STREAMED_SPLIT = re.compile(r"(?P<base>[^\[\]:]+)(?:\[(?P<start>\d*):(?P<stop>\d*)\])?")


def _base_split(split: str) -> str:
    return split.split("[", 1)[0].strip()


def streamed_split(split: str) -> tuple[str, int, int | None]:
    """`train[100:600]` -> ("train", 100, 600), for `skip`/`take` on a stream."""
    match = _STREAMED_SPLIT.fullmatch(split.strip())
    start = int(match["start"] or 0) if match else 0
    stop = int(match["stop"]) if match and match["stop"] else None
    if match is None or (stop is not None and stop <= start):
        raise RecipeError(
            f"split {split!r}: a streamed split has no length; use a whole split or a row range such as "
            "train[:1000] or train[1000:] (no percentages)"
        )
    return match["base"].strip(), start, stop


def _local_data_file(dataset_name: str, split: str) -> Path | None:
    """Your own file for `split`: `dataset_name` itself, or `{dataset_name}/{split}.jsonl|.json|.parquet`."""
    path = Path(dataset_name).expanduser()
    if path.is_file():
        if path.suffix not in _LOCAL_BUILDERS:
            raise RecipeError(f"{path}: unsupported file type; use {', '.join(_LOCAL_BUILDERS)}")
        return path
    if path.is_dir():
        for suffix in _LOCAL_BUILDERS:
            candidate = path / f"{_base_split(split)}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def _read_split(
    dataset_name: str, config: str | None, split: str, streaming: bool
) -> tuple[Dataset | IterableDataset, Path | None]:
    """The raw rows of `split`, and the folder of a local data file (its relative image paths start there)."""
    base, start, stop = streamed_split(split) if streaming else (split, 0, None)
    local = _local_data_file(dataset_name, split)
    try:
        if local is not None:
            # Read into Arrow even when streaming (`_standard_rows` turns it into a stream after resolving image
            # paths): a local file gains nothing from streaming, and a streamed JSON file has no known columns.
            data_files = {_base_split(split): str(local)}  # a single file serves any split name
            raw = datasets.load_dataset(_LOCAL_BUILDERS[local.suffix], data_files=data_files, split=split)
            return raw, local.parent
        raw = datasets.load_dataset(dataset_name, config, split=base, streaming=streaming)
    except (FileNotFoundError, ConnectionError, ValueError, DatasetGenerationError) as err:
        # Unknown Hub id or subset, missing path, unknown split, unparsable file: one line, not a traceback.
        cause = err.__cause__ if isinstance(err, DatasetGenerationError) and err.__cause__ else err
        reason = first_line(cause).rstrip(".")
        elsewhere = "" if Path(dataset_name).expanduser().exists() else "; it is not a local path either"
        raise RecipeError(
            f"cannot load dataset {dataset_name!r} (config {config}, split {split!r}): {reason}{elsewhere}"
        ) from None
    if start:
        raw = raw.skip(start)
    if stop is not None:
        raw = raw.take(stop - start)
    return raw, None


def _rename_columns(
    raw: Dataset | IterableDataset, columns: Mapping[str, str], where: str
) -> Dataset | IterableDataset:
    """Apply a mixture entry's `columns: {task column: dataset column}`."""
    present = raw.column_names or []
    absent = [source for source in columns.values() if source not in present]
    if absent:
        raise RecipeError(
            f"{where}: `columns` names {', '.join(absent)}, not in the dataset; found: {', '.join(present)}"
        )
    # A column already named like a rename target is replaced by the renamed one.
    shadowed = [target for target in columns if target in present and target not in columns.values()]
    return raw.remove_columns(shadowed).rename_columns(
        {source: target for target, source in columns.items() if source != target}
    )


def _check_columns(raw: Dataset | IterableDataset, task: Task, where: str) -> None:
    present = set(raw.column_names or [])
    missing = [
        " or ".join(required) if isinstance(required, tuple) else required
        for required in task.required_columns
        if not present.intersection(required if isinstance(required, tuple) else (required,))
    ]
    if missing:
        raise RecipeError(
            f"{where}: missing column(s) {', '.join(missing)} needed by task {task.name!r}; "
            f"found: {', '.join(sorted(present))}"
        )


def _absolute_paths(batch: dict[str, list[Any]], column: str, folder: str) -> dict[str, list[Any]]:
    return {
        column: [
            str(Path(folder, value).expanduser()) if isinstance(value, str) and "://" not in value else value
            for value in batch[column]
        ]
    }


def _unit_hash(seed: int, salt: str, key: str) -> float:
    """A uniform number in [0, 1), fixed by (seed, salt, key): a seeded coin that needs no row order."""
    digest = hashlib.blake2b(f"{seed}:{salt}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _unit_hashes(seed: int, salt: str, keys: list[str]) -> list[float]:
    return [_unit_hash(seed, salt, key) for key in keys]


def _row_key(turns: list[dict[str, Any]] | None) -> str:
    # Docmatix / Cauldron rows have no id column: a row is named by its turns' text, so the selection does not
    # depend on row order, shards, workers or streaming.
    return json.dumps([[t.get("user"), t.get("assistant"), t.get("source")] for t in turns or []])


def _keep_rows(texts: list[Any], fraction: float, seed: int) -> list[bool]:
    return [u < fraction for u in _unit_hashes(seed, "images", [_row_key(turns) for turns in texts])]


def _keep_turns(texts: list[Any], fraction: float, seed: int) -> dict[str, list[Any]]:
    kept = []
    for turns in texts:
        key = _row_key(turns)
        coins = _unit_hashes(seed, "turns", [f"{key}:{number}" for number in range(len(turns or []))])
        kept.append([turn for turn, u in zip(turns or [], coins, strict=True) if u < fraction])
    return {"texts": kept}


def subsample_turns(
    raw: Dataset | IterableDataset, image_fraction: float, turn_fraction: float, seed: int
) -> Dataset | IterableDataset:
    """Rows in The Cauldron's layout (`images`, `texts`): keep each row with probability `image_fraction`,
    then each of its turns with probability `turn_fraction`, independent seeded coins (a hash of the row's
    turns, `seed` and the turn number). Lazy on a stream; images stay undecoded."""
    if image_fraction < 1:
        raw = raw.filter(
            _keep_rows,
            batched=True,
            input_columns=["texts"],
            fn_kwargs={"fraction": image_fraction, "seed": seed},
        )
    if turn_fraction < 1:
        raw = raw.map(
            _keep_turns,
            batched=True,
            input_columns=["texts"],
            fn_kwargs={"fraction": turn_fraction, "seed": seed},
            features=raw.features,  # unchanged; a stream would otherwise forget its columns
        )
    return raw


def is_turn_layout(task: Task) -> bool:
    return task.image_column == "images" and "texts" in task.required_columns


def standard_rows(
    task: Task,
    dataset_name: str,
    split: str,
    context: SourceContext,
    config: str | None = None,
    max_samples: int | None = None,
    num_proc: int | None = None,
    streaming: bool = False,
    columns: Mapping[str, str] | None = None,
    subsample: tuple[float, float, int] | None = None,
    dataset_format: str | None = None,
    on_bad_sample: str = "raise",
) -> Dataset | IterableDataset:
    """Standard rows with undecoded images (`ROW_FEATURES`); `subsample` = (image_fraction,
    turn_fraction, seed) for `subsample_turns`; `dataset_format`: another tool's layout
    (`florence_recipes.data.formats`), read with its missing images skipped if `on_bad_sample` is skip."""
    if dataset_format is not None:
        raw = format_rows(dataset_format, dataset_name, split, task.name, on_bad_sample == "skip")
        local_folder = None  # image paths are absolute already
    else:
        raw, local_folder = _read_split(dataset_name, config, split, streaming)
    where = f"{dataset_name}{f' [{config}]' if config else ''} ({split})"
    if columns:
        raw = _rename_columns(raw, columns, where)
    _check_columns(raw, task, where)
    if local_folder is not None and not isinstance(raw.features.get(task.image_column), Image):
        # JSON lines name images by path, relative to the file's folder rather than the working directory.
        raw = raw.map(
            _absolute_paths,
            batched=True,
            fn_kwargs={"column": task.image_column, "folder": str(local_folder)},
            desc="Resolving image paths",
        )
    if streaming and isinstance(raw, Dataset):
        raw = raw.to_iterable_dataset()  # a local file, read into Arrow, joins the streamed sources
    if max_samples is not None:
        raw = raw.take(max_samples) if streaming else raw.select(range(min(max_samples, len(raw))))
    raw = raw.cast_column(task.image_column, task.image_feature)
    if subsample is not None:
        raw = subsample_turns(raw, *subsample)
    if task.describe_rows is not None and not streaming:
        logger.info(task.describe_rows(raw, context))
    convert: dict[str, Any] = {
        "function": task.convert_batch,
        "batched": True,
        "with_indices": True,
        "fn_kwargs": {"context": context},
        "remove_columns": raw.column_names,
    }
    if streaming:
        # Typed after the map rather than by it: a stream typed by `map(features=...)` ignores later casts, so
        # its images would never decode (datasets 5.2).
        return raw.map(**convert).cast(ROW_FEATURES)
    return raw.map(**convert, features=ROW_FEATURES, num_proc=num_proc, desc=f"Standardising {where}")


def load_task_split(
    task: Task,
    dataset_name: str,
    split: str,
    dataset_config: str | None = None,
    max_samples: int | None = None,
    num_proc: int | None = None,
    streaming: bool = False,
    *,
    columns: Mapping[str, str] | None = None,
    source: str | None = None,
    no_image_policy: str = "skip",
    multi_image_policy: str = "skip",
) -> Dataset | IterableDataset:
    """Load `split` of `dataset_name` and convert it to standard rows (images decode when read).

    `split` may use `datasets`' slicing (`train[:95%]`); streamed, only row ranges (`train[:500]`).
    `max_samples` caps the source rows, before conversion. `source` labels the rows (default: the subset for
    the Cauldron, else the task name); the image policies apply to rows with no or several images.
    """
    context = SourceContext(
        name=source or task.source_name(dataset_config),
        split=split,
        no_image_policy=no_image_policy,
        multi_image_policy=multi_image_policy,
    )
    rows = standard_rows(
        task, dataset_name, split, context, dataset_config, max_samples, num_proc, streaming, columns
    )
    return rows.cast_column("image", Image())


def column_values(dataset: Dataset, column: str) -> list[Any]:
    """One column in dataset order, read without decoding images (e.g. gold answers for scoring)."""
    return list(dataset.select_columns([column])[column])
