"""The task registry: how a row of each kind of dataset becomes standard examples (image, prompt, target,
gold answers) and which metrics score them.

Adding a task = one `convert_batch` function and one `register_task(Task(...))` call. A converter gets a
batch of source rows (images undecoded: `{"bytes", "path"}` dicts), their row indices and the
`SourceContext`, and returns the `STANDARD_COLUMNS`, possibly with more or fewer rows than it got. The
built-in tasks are registered by `florence_recipes.data` on import: `hub_tasks` (DocVQA, The Cauldron,
Docmatix) and `own_tasks` (your own data).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from datasets import Dataset, Image
from datasets.features.features import FeatureType

from florence_recipes.errors import RecipeError

logger = logging.getLogger(__name__)

STANDARD_COLUMNS = ("id", "image", "image_id", "prompt", "target", "answers", "tags", "source")


@dataclass(frozen=True)
class SourceContext:
    """What a converter knows about the source besides its rows."""

    name: str  # written to `source`: per-source metrics are reported as eval_<name>_<metric>
    split: str
    no_image_policy: str = "skip"  # rows without an image: skip | blank (a white picture)
    multi_image_policy: str = "skip"  # rows with several: skip | first | concat (side by side)


ConvertBatch = Callable[[dict[str, list[Any]], list[int], SourceContext], dict[str, list[Any]]]


@dataclass(frozen=True)
class Task:
    """How rows of one kind of dataset become standard examples, and how predictions are scored."""

    name: str
    description: str
    default_dataset: str | None  # used when a mixture entry names only the task; None for your own data
    image_column: str
    required_columns: tuple[str | tuple[str, ...], ...]  # a tuple: any one of these columns
    convert_batch: ConvertBatch  # batched: source columns -> STANDARD_COLUMNS (may change the row count)
    metrics: tuple[str, ...]  # names in `florence_recipes.metrics.ITEM_METRICS`; the first is the headline
    example_prompt: str  # shown in the model card's usage snippet
    # The exact prompt the converter writes; `{...}` is the row's text (`{question}`, `{caption}`, or `{prompt}`
    # for a prompt used as is). Saved with every trained model (`florence_recipes.provenance`).
    prompt_format: str
    # How `image_column` is cast so that images pass through `map` undecoded.
    image_feature: FeatureType = field(default_factory=lambda: Image(decode=False))
    # Metrics per dataset config, for tasks whose configs are scored differently (the Cauldron's subsets).
    subset_metrics: Mapping[str, tuple[str, ...]] | None = None
    # Florence-2 task token whose `post_process_generation` boxes are scored with mAP instead of `metrics`.
    box_task: str | None = None
    # One log line about the rows of a (non-streamed) source before conversion, e.g. what a policy drops.
    describe_rows: Callable[[Dataset, SourceContext], str] | None = None

    def metrics_for(self, config: str | None) -> tuple[str, ...]:
        if self.subset_metrics is None:
            return self.metrics
        if config not in self.subset_metrics:
            given = f"unknown subset {config!r}" if config else "dataset_config (the subset) is required"
            raise RecipeError(
                f"task {self.name!r}: {given}; valid subsets: {', '.join(sorted(self.subset_metrics))}"
            )
        return self.subset_metrics[config]

    def source_name(self, config: str | None) -> str:
        """Default `source` label: the subset for multi-subset tasks, else the task name."""
        return config if self.subset_metrics is not None and config else self.name


TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    if task.name in TASKS:
        raise ValueError(f"task {task.name!r} is already registered")
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise RecipeError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def row_ids(batch: dict[str, list[Any]], indices: list[int], context: SourceContext) -> list[str]:
    if "id" in batch:
        return [str(i) for i in batch["id"]]
    return [f"{context.name}-{context.split}-{index}" for index in indices]


def image_digest(image: dict[str, Any] | None) -> str | None:
    """Identity of an undecoded image from its content: the digest of its bytes, or of its file's bytes.

    Grouping (`group_by_image`), de-duplicated vision and the feature cache give every row with one id the
    same features, so only the content may decide it: parquet `path`s are often bare file names that repeat,
    and id columns (DocVQA's `docId`) can repeat across different pages. None when the image cannot be read;
    such rows are reported by `check_samples`.
    """
    if not image:
        return None
    if image.get("bytes"):
        return hashlib.sha1(image["bytes"]).hexdigest()
    if image.get("path"):
        try:
            with open(image["path"], "rb") as file:
                return hashlib.file_digest(file, "sha1").hexdigest()
        except OSError:
            return None
    return None


def image_ids_for(images: list[dict[str, Any] | None], ids: list[str]) -> list[str]:
    """Content digests (see `image_digest`); a row whose image cannot be read keeps an id of its own."""
    return [image_digest(image) or f"unreadable-{row_id}" for image, row_id in zip(images, ids, strict=True)]


def check_id_hint(hints: list[Any], image_ids: list[str], column: str, context: SourceContext) -> None:
    """An id column is only a hint: say so when it names two different pictures (the digest decides)."""
    seen: dict[str, str] = {}
    for hint, image_id in zip(hints, image_ids, strict=True):
        if seen.setdefault(str(hint), image_id) != image_id:
            logger.warning(
                "%s (%s): %s=%s names different images; questions are grouped by image content instead",
                context.name,
                context.split,
                column,
                hint,
            )
            return
