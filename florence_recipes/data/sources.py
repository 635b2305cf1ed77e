"""A run's sources: one dataset, or the entries of a `dataset_mixture`, checked before anything is downloaded,
then loaded (`florence_recipes.data.loading`) and concatenated or interleaved by weight (`mix_datasets`),
streamed or not.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import datasets
from datasets import Dataset, Image, IterableDataset

from florence_recipes.data.formats import Format, format_counts, implied_task, resolve_format
from florence_recipes.data.loading import ROW_FEATURES, is_turn_layout, standard_rows, streamed_split
from florence_recipes.data.tasks import SourceContext, Task, get_task
from florence_recipes.errors import RecipeError

if TYPE_CHECKING:
    from transformers import TrainingArguments

    from florence_recipes.configs.data import DataArguments

logger = logging.getLogger(__name__)

STREAMING_SHUFFLE_BUFFER = 1_000  # examples held by the streamed train set's shuffle buffer
MIXTURE_KEYS = (
    "dataset", "config", "split", "eval_split", "weight", "fraction", "columns", "task", "name",
    "image_fraction", "turn_fraction",
)  # fmt: skip


@dataclass(frozen=True)
class DataSource:
    """One dataset feeding a run: a `dataset_mixture` entry, or `task` + `dataset_name` + `dataset_config`."""

    task: Task
    dataset: str
    config: str | None
    split: str
    eval_split: str
    name: str  # the `source` label; per-source metrics are eval_<name>_<metric>
    weight: float | None = None  # sampling weight when interleaving; None: concatenate
    fraction: float = 1.0  # share of the source's examples used (a seeded random subset)
    columns: Mapping[str, str] | None = None  # {task column: dataset column}
    image_fraction: float = 1.0  # seeded share of a multi-turn source's rows (images), see subsample_turns
    turn_fraction: float = 1.0  # seeded share of each kept row's turns
    format: str | None = (
        None  # another tool's layout (florence_recipes.data.formats); None: datasets reads it
    )

    @property
    def metrics(self) -> tuple[str, ...]:
        return self.task.metrics_for(self.config)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _parse_entry(index: int, entry: Any, data_args: DataArguments) -> DataSource:
    where = f"dataset_mixture[{index}]"
    if not isinstance(entry, dict):
        raise RecipeError(
            f"{where}: expected a mapping such as {{dataset: ..., task: ..., weight: ...}}, got {entry!r}"
        )
    unknown = sorted(set(entry) - set(MIXTURE_KEYS))
    if unknown:
        raise RecipeError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; valid keys: {', '.join(MIXTURE_KEYS)}"
        )
    try:
        task = get_task(entry.get("task", data_args.task))
    except RecipeError as err:
        raise RecipeError(f"{where}: {err}") from None
    dataset = entry.get("dataset", task.default_dataset)
    config = entry.get("config")
    if not isinstance(dataset, str) or not dataset:
        raise RecipeError(f"{where}: `dataset` (a Hub id or a local path) is required for task {task.name!r}")
    where = f"{where} ({dataset}{f', {config}' if config else ''})"
    for key in ("config", "split", "eval_split", "name"):
        if key in entry and not (isinstance(entry[key], str) and entry[key]):
            raise RecipeError(f"{where}: `{key}` must be a non-empty string, got {entry[key]!r}")
    weight, fraction, columns = entry.get("weight"), entry.get("fraction", 1.0), entry.get("columns")
    if weight is not None and not (_is_number(weight) and weight > 0):
        raise RecipeError(f"{where}: `weight` must be a number > 0, got {weight!r}")
    if not (_is_number(fraction) and 0 < fraction <= 1):
        raise RecipeError(f"{where}: `fraction` must be a number in (0, 1], got {fraction!r}")
    if columns is not None and not (
        isinstance(columns, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in columns.items())
    ):
        raise RecipeError(
            f"{where}: `columns` must map the task's column names to the dataset's, e.g. "
            f"{{question: query}}; got {columns!r}"
        )
    try:
        task.metrics_for(config)  # an unknown or missing Cauldron subset fails here, before any download
    except RecipeError as err:
        raise RecipeError(f"{where}: {err}") from None
    image_fraction, turn_fraction = _turn_fractions(
        task,
        entry.get("image_fraction", data_args.image_fraction),
        entry.get("turn_fraction", data_args.turn_fraction),
        where,
    )
    return DataSource(
        task=task,
        dataset=dataset,
        config=config,
        split=entry.get("split", data_args.train_split),
        eval_split=entry.get("eval_split", data_args.eval_split),
        name=entry.get("name", task.source_name(config)),
        weight=None if weight is None else float(weight),
        fraction=float(fraction),
        columns=columns,
        image_fraction=image_fraction,
        turn_fraction=turn_fraction,
    )


def _turn_fractions(task: Task, image_fraction: Any, turn_fraction: Any, where: str) -> tuple[float, float]:
    for key, value in (("image_fraction", image_fraction), ("turn_fraction", turn_fraction)):
        if not (_is_number(value) and 0 < value <= 1):
            raise RecipeError(f"{where}: `{key}` must be a number in (0, 1], got {value!r}")
    if (image_fraction < 1 or turn_fraction < 1) and not is_turn_layout(task):
        raise RecipeError(
            f"{where}: image_fraction / turn_fraction need a multi-turn source (rows of images + texts, e.g. "
            f"task docmatix or cauldron); task {task.name!r} has one question per row: use `fraction`"
        )
    return float(image_fraction), float(turn_fraction)


def _parse_mixture(data_args: DataArguments) -> list[DataSource]:
    entries = data_args.dataset_mixture
    if not isinstance(entries, list) or not entries:
        raise RecipeError(
            "dataset_mixture: expected a non-empty list of {dataset, config, split, weight or fraction, "
            f"columns, task}} entries, got {entries!r}"
        )
    sources = [_parse_entry(index, entry, data_args) for index, entry in enumerate(entries)]
    weighted = [str(i) for i, source in enumerate(sources) if source.weight is not None]
    if weighted and len(weighted) != len(sources):
        raise RecipeError(
            f"dataset_mixture: give `weight` to every entry or to none (only entries {', '.join(weighted)} "
            "have one); `fraction` subsamples a single source"
        )
    for name, count in Counter(source.name for source in sources).items():
        if count > 1:
            raise RecipeError(
                f"dataset_mixture: {count} entries are named {name!r}; give them distinct `name`s "
                "(per-source metrics are reported as eval_<name>_<metric>)"
            )
    return sources


def _check_streaming(
    sources: list[DataSource], data_args: DataArguments, training_args: TrainingArguments
) -> None:
    if training_args.do_train and training_args.max_steps <= 0:
        raise RecipeError(
            "streaming: true needs max_steps > 0: a streamed dataset has no length, so the Trainer cannot count epochs"
        )
    for source in sources:
        if source.fraction < 1:
            raise RecipeError(
                f"{source.name}: `fraction` needs the source's length, which a stream lacks; use a row range "
                "in `split` instead, e.g. train[:5000]"
            )
        streamed_split(source.split)
        _, _, stop = streamed_split(source.eval_split)
        if training_args.do_eval and stop is None and data_args.max_eval_samples is None:
            raise RecipeError(
                f"{source.name}: streamed eval split {source.eval_split!r} has no end; set max_eval_samples "
                "or a row range such as train[:500]"
            )


def data_sources(data_args: DataArguments, training_args: TrainingArguments) -> list[DataSource]:
    """The run's sources, checked before anything is downloaded: task names, mixture entries, Cauldron
    subsets and streaming options fail here with one line naming the entry or option."""
    if data_args.dataset_mixture is None:
        fmt = resolve_format(data_args.dataset_name, data_args.dataset_format)
        task = get_task(data_args.task if fmt is None else _format_task(fmt, data_args))
        task.metrics_for(data_args.dataset_config)
        image_fraction, turn_fraction = _turn_fractions(
            task, data_args.image_fraction, data_args.turn_fraction, data_args.dataset_name
        )
        sources = [
            DataSource(
                task=task,
                dataset=data_args.dataset_name,
                config=data_args.dataset_config,
                split=data_args.train_split,
                eval_split=data_args.eval_split,
                name=task.source_name(data_args.dataset_config),
                image_fraction=image_fraction,
                turn_fraction=turn_fraction,
                format=None if fmt is None else fmt.name,
            )
        ]
    elif data_args.dataset_format != "auto":
        raise RecipeError(
            "dataset_format applies to dataset_name; dataset_mixture entries are read by datasets.load_dataset"
        )
    else:
        sources = _parse_mixture(data_args)
    if data_args.streaming:
        _check_streaming(sources, data_args, training_args)
    return sources


def _format_task(fmt: Format, data_args: DataArguments) -> str:
    """A format implies its task. `task:` in a YAML is a default the format overrides (so one smoke YAML serves
    every layout); `--task` typed on the command line that contradicts it is a mistake, reported."""
    skip = data_args.on_bad_sample == "skip"
    implied = implied_task(fmt, data_args.dataset_name, data_args.train_split, skip)
    if implied != data_args.task:
        if data_args.task_on_command_line:
            raise RecipeError(
                f"--task {data_args.task}: {data_args.dataset_name} is in the {fmt.name} layout, which is read as "
                f"task {implied}; drop --task, or set dataset_format: datasets to read the folder as your own rows"
            )
        logger.info(
            "%s: %s layout, task %s (not task: %s)", data_args.dataset_name, fmt.name, implied, data_args.task
        )
    return implied


def format_metrics(sources: list[DataSource], data_args: DataArguments, split: str) -> dict[str, int]:
    """`<split>_<reason>` for what reading the sources' tool layouts skipped or clipped (all_results.json);
    `split` is "train" or "eval". Counted over each whole annotation file the split reads."""
    counts: Counter[str] = Counter()
    for source in sources:
        if source.format is not None:
            name = source.split if split == "train" else source.eval_split
            counts.update(
                format_counts(source.format, source.dataset, name, data_args.on_bad_sample == "skip")
            )
    return {f"{split}_{reason}": count for reason, count in sorted(counts.items())}


def _load_source(
    source: DataSource,
    split: str,
    max_samples: int | None,
    data_args: DataArguments,
    subsample_seed: int | None = None,
) -> Dataset | IterableDataset:
    """`subsample_seed`: apply the source's image/turn fractions with this seed (training splits)."""
    context = SourceContext(source.name, split, data_args.no_image_policy, data_args.multi_image_policy)
    return standard_rows(
        source.task,
        source.dataset,
        split,
        context,
        config=source.config,
        max_samples=max_samples,
        num_proc=data_args.preprocessing_num_workers,
        streaming=data_args.streaming,
        columns=source.columns,
        subsample=None
        if subsample_seed is None or (source.image_fraction == 1 and source.turn_fraction == 1)
        else (source.image_fraction, source.turn_fraction, subsample_seed),
        dataset_format=source.format,
        on_bad_sample=data_args.on_bad_sample,
    )


def mix_datasets(
    parts: list[Dataset] | list[IterableDataset],
    weights: list[float] | None = None,
    seed: int = 0,
    stopping_strategy: str = "first_exhausted",
) -> Dataset | IterableDataset:
    """Concatenate `parts`, or with `weights` interleave them: each example comes from part i with
    probability weights[i] / sum(weights), in an order fixed by `seed`. `first_exhausted` ends when a part
    runs out (nothing repeats); `all_exhausted` goes on until every part was seen, repeating the others."""
    if len(parts) == 1:
        return parts[0]
    if weights is None:
        return datasets.concatenate_datasets(parts)
    total = float(sum(weights))
    return datasets.interleave_datasets(
        parts, probabilities=[w / total for w in weights], seed=seed, stopping_strategy=stopping_strategy
    )


def load_train_dataset(
    sources: list[DataSource], data_args: DataArguments, seed: int
) -> Dataset | IterableDataset:
    """The training examples of all sources, mixed (see `mix_datasets`); streamed if `data_args.streaming`."""
    parts = []
    for source in sources:
        rows = _load_source(source, source.split, data_args.max_train_samples, data_args, subsample_seed=seed)
        if source.fraction < 1:
            rows = rows.shuffle(seed=seed).select(range(max(1, round(source.fraction * len(rows)))))
        if not data_args.streaming:
            logger.info("train source %s: %d examples", source.name, len(rows))
        parts.append(rows)
    weights = None if sources[0].weight is None else [source.weight for source in sources]
    train = mix_datasets(parts, weights, seed, data_args.mixture_stopping_strategy)
    if data_args.streaming:  # the Trainer shuffles map-style datasets only
        train = train.shuffle(seed=seed, buffer_size=STREAMING_SHUFFLE_BUFFER)
    return train.cast_column("image", Image())


def load_eval_dataset(sources: list[DataSource], data_args: DataArguments) -> Dataset:
    """The eval examples of all sources, concatenated in source order (never streamed: scoring needs a fixed
    order and length; a streamed eval split, bounded by `data_sources`, is read into memory)."""
    parts = []
    for source in sources:
        rows = _load_source(source, source.eval_split, data_args.max_eval_samples, data_args)
        if isinstance(rows, IterableDataset):
            rows = Dataset.from_list(list(rows), features=ROW_FEATURES)
        logger.info("eval source %s: %d examples", source.name, len(rows))
        parts.append(rows)
    return mix_datasets(parts).cast_column("image", Image())
