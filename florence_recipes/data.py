"""Task registry and dataset loading: every dataset becomes the same standard rows.

A *task* says how one row of a source dataset becomes training examples — (image, prompt, target, gold
answers) — and which metrics score it. `load_task_split` runs the real `datasets.load_dataset(name_or_path)`
and maps rows to `STANDARD_FEATURES`, so one collator, one trainer and one `compute_metrics` serve DocVQA,
Cauldron subsets and user data alike. Adding a task = writing one `convert_batch` function and registering it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import datasets
from datasets import Dataset, Features, Image, IterableDataset, Value
from datasets import Sequence as SequenceFeature

from florence_recipes.errors import RecipeError

logger = logging.getLogger(__name__)

STANDARD_COLUMNS = ("id", "image", "image_id", "prompt", "target", "answers", "tags", "source")
# Images stay undecoded through `map` (no decode/re-encode); they are decoded lazily in DataLoader workers.
_UNDECODED_FEATURES = Features(
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
STANDARD_FEATURES = _UNDECODED_FEATURES.copy()
STANDARD_FEATURES["image"] = Image()

ConvertBatch = Callable[[dict[str, list[Any]]], dict[str, list[Any]]]


@dataclass(frozen=True)
class Task:
    """How rows of one kind of dataset become standard examples, and how predictions are scored."""

    name: str
    description: str
    default_dataset: str
    image_column: str
    required_columns: tuple[str, ...]
    convert_batch: ConvertBatch  # batched: source columns -> STANDARD_COLUMNS (may change the row count)
    metrics: tuple[str, ...]  # names in `florence_recipes.metrics.ITEM_METRICS`; the first is the headline
    example_prompt: str  # shown in the model card's usage snippet


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


# --- DocVQA ---------------------------------------------------------------------------------------------

DOCVQA_PROMPT = "<DocVQA>"  # the prompt prefix of the released DocVQA fine-tune and of the blog recipe


def _convert_docvqa(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
    answers = [list(a or []) for a in batch["answers"]]
    return {
        "id": [str(q) for q in batch["questionId"]],
        "image": batch["image"],
        "image_id": [str(d) for d in batch["docId"]],
        "prompt": [DOCVQA_PROMPT + q.strip() for q in batch["question"]],
        # Train on the first gold answer (as the blog); score against all of them.
        "target": [a[0] if a else "" for a in answers],
        "answers": answers,
        "tags": [list(t or []) for t in batch.get("question_types", [[]] * len(answers))],
        "source": ["docvqa"] * len(answers),
    }


register_task(
    Task(
        name="docvqa",
        description="DocVQA: questions about scanned documents, scored with ANLS.",
        default_dataset="HuggingFaceM4/DocumentVQA",
        image_column="image",
        required_columns=("questionId", "question", "image", "docId", "answers"),
        convert_batch=_convert_docvqa,
        metrics=("anls", "levenshtein", "exact_match"),
        example_prompt=DOCVQA_PROMPT + "What is the total amount?",
    )
)


# --- loading --------------------------------------------------------------------------------------------


def load_task_split(
    task: Task,
    dataset_name: str,
    split: str,
    dataset_config: str | None = None,
    max_samples: int | None = None,
    num_proc: int | None = None,
    streaming: bool = False,
) -> Dataset | IterableDataset:
    """Load `split` of `dataset_name` with `datasets.load_dataset` and convert it to standard rows."""
    raw = datasets.load_dataset(dataset_name, dataset_config, split=split, streaming=streaming)
    missing = [c for c in task.required_columns if c not in (raw.column_names or [])]
    if missing:
        raise RecipeError(
            f"{dataset_name} ({split}): missing column(s) {', '.join(missing)} needed by task {task.name!r}; "
            f"found: {', '.join(raw.column_names or [])}"
        )
    if max_samples is not None:
        raw = raw.take(max_samples) if streaming else raw.select(range(min(max_samples, len(raw))))
    raw = raw.cast_column(task.image_column, Image(decode=False))
    kwargs: dict[str, Any] = {} if streaming else {"num_proc": num_proc, "desc": f"Standardising {split}"}
    converted = raw.map(
        task.convert_batch,
        batched=True,
        remove_columns=raw.column_names,
        features=_UNDECODED_FEATURES,
        **kwargs,
    )
    return converted.cast_column("image", Image())


def column_values(dataset: Dataset, column: str) -> list[Any]:
    """One column in dataset order, read without decoding images (e.g. gold answers for scoring)."""
    return list(dataset.select_columns([column])[column])
