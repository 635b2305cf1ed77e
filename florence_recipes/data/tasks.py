"""The task registry and the built-in tasks: how a row of each kind of dataset becomes standard examples
(image, prompt, target, gold answers) and which metrics score them.

Adding a task = one `convert_batch` function and one `register_task(Task(...))` call. A converter gets a
batch of source rows (images undecoded: `{"bytes", "path"}` dicts), their row indices and the
`SourceContext`, and returns the `STANDARD_COLUMNS`, possibly with more or fewer rows than it got.

| task        | rows                                                      | prompt                          | metrics |
|-------------|-----------------------------------------------------------|---------------------------------|---------|
| `docvqa`    | HuggingFaceM4/DocumentVQA                                 | `<DocVQA>` + question           | ANLS |
| `cauldron`  | any HuggingFaceM4/the_cauldron subset (`dataset_config`)  | each user turn                  | by subset family: `CAULDRON_FAMILIES` |
| `docmatix`  | HuggingFaceM4/Docmatix (`dataset_config: images`)         | `<DocVQA>` + each user turn     | ANLS |
| `vqa`       | your data: `image`, `prompt` or `question`, `answer(s)`   | prompt, or `<VQA>` + question   | ANLS, VQA accuracy |
| `caption`   | your data: `image`, `caption` (optional `prompt`)         | `<CAPTION>`                     | Levenshtein similarity |
| `ocr`       | your data: `image`, `text` (optional `prompt`)            | `<OCR>`                         | Levenshtein similarity |
| `detection` | your data: `image`, `objects: [{bbox, label}]` (pixels)   | `<OD>`                          | COCO mAP |
| `grounding` | your data: `image`, `caption`, `objects: [{bbox, label}]` | `<CAPTION_TO_PHRASE_GROUNDING>` | COCO mAP |
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache, partial
from typing import Any

import numpy as np
import pyarrow.compute as pc
from datasets import Dataset, Image
from datasets.features.features import FeatureType
from PIL import Image as PILImage

from florence_recipes.data.images import image_size, to_rgb
from florence_recipes.data.validation import as_text_list
from florence_recipes.errors import RecipeError
from florence_recipes.evaluation.detection import format_detection_target

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


def _row_ids(batch: dict[str, list[Any]], indices: list[int], context: SourceContext) -> list[str]:
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


def _image_ids(images: list[dict[str, Any] | None], ids: list[str]) -> list[str]:
    """Content digests (see `image_digest`); a row whose image cannot be read keeps an id of its own."""
    return [image_digest(image) or f"unreadable-{row_id}" for image, row_id in zip(images, ids, strict=True)]


def _check_id_hint(hints: list[Any], image_ids: list[str], column: str, context: SourceContext) -> None:
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


# --- DocVQA ---------------------------------------------------------------------------------------------

DOCVQA_PROMPT = "<DocVQA>"  # the prompt prefix of the released DocVQA fine-tune and of the blog recipe


def _convert_docvqa(
    batch: dict[str, list[Any]], indices: list[int], context: SourceContext
) -> dict[str, list[Any]]:
    # None marks answers that are not strings; they and empty questions are reported by `check_samples`.
    answers = [as_text_list(a) for a in batch["answers"]]
    ids = [str(q) for q in batch["questionId"]]
    image_ids = _image_ids(batch["image"], ids)
    _check_id_hint(batch["docId"], image_ids, "docId", context)
    return {
        "id": ids,
        "image": batch["image"],
        "image_id": image_ids,
        "prompt": [
            DOCVQA_PROMPT + q.strip() if isinstance(q, str) and q.strip() else "" for q in batch["question"]
        ],
        # Train on the first gold answer (as the blog); score against all of them.
        "target": [a[0] if a else "" for a in answers],
        "answers": answers,
        "tags": [list(t or []) for t in batch.get("question_types", [[]] * len(answers))],
        "source": [context.name] * len(answers),
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
        prompt_format=DOCVQA_PROMPT + "{question}",
    )
)


# --- The Cauldron ---------------------------------------------------------------------------------------

# Metric per subset family, headline first. The Cauldron keeps one answer per turn, so VQA accuracy is
# the normalised exact match of the official VQA script there; it averages over humans when a copy of
# such a dataset carries all ten answers.
CAULDRON_FAMILIES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    # family: (what it holds, metrics, subsets)
    "document": (
        "document, infographic and scene-text QA",
        ("anls", "exact_match"),
        ("docvqa", "infographic_vqa", "ocrvqa", "st_vqa"),
    ),
    "chart": (
        "chart, table and math QA with numeric answers (5% tolerance)",
        ("relaxed_accuracy", "exact_match"),
        (
            "chartqa", "clevr_math", "dvqa", "figureqa", "finqa", "geomverse", "hitab", "mapqa",
            "multihiertt", "plotqa", "robut_sqa", "robut_wikisql", "robut_wtq", "tabmwp", "tat_qa",
        ),
    ),
    "multiple_choice": (
        "multiple choice and closed-form answers (letters, yes/no, counts)",
        ("exact_match",),
        (
            "ai2d", "aokvqa", "clevr", "hateful_memes", "iconqa", "intergps", "nlvr2", "raven",
            "scienceqa", "tallyqa", "tqa", "visual7w", "vsr",
        ),
    ),
    "vqa": (
        "open-ended VQA collected with several human answers",
        ("vqa_accuracy", "exact_match"),
        ("cocoqa", "okvqa", "textvqa", "vqarad", "vqav2"),
    ),
    "text": (
        "captions, transcriptions, descriptions and code (normalised Levenshtein similarity)",
        ("levenshtein",),
        (
            "chart2text", "datikz", "diagram_image_to_text", "iam", "localized_narratives", "mimic_cgd",
            "rendered_text", "screen2words", "spot_the_diff", "textcaps", "vistext", "visualmrc", "websight",
        ),
    ),
}  # fmt: skip
CAULDRON_SUBSET_METRICS: dict[str, tuple[str, ...]] = {
    subset: metrics for _, metrics, subsets in CAULDRON_FAMILIES.values() for subset in subsets
}


def cauldron_metric_table() -> str:
    """The subset-family -> metric table as Markdown (the README's copy of `CAULDRON_FAMILIES`)."""
    lines = ["| family | metric (headline first) | subsets |", "|---|---|---|"]
    for what, metrics, subsets in CAULDRON_FAMILIES.values():
        lines.append(f"| {what} | {', '.join(metrics)} | {', '.join(subsets)} |")
    return "\n".join(lines)


@cache
def _blank_image() -> dict[str, Any]:
    buffer = io.BytesIO()
    PILImage.new("RGB", (64, 64), "white").save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def _side_by_side(images: list[dict[str, Any]]) -> dict[str, Any]:
    pictures = [
        to_rgb(PILImage.open(io.BytesIO(i["bytes"]) if i.get("bytes") else i["path"])) for i in images
    ]
    canvas = PILImage.new("RGB", (sum(p.width for p in pictures), max(p.height for p in pictures)), "white")
    x = 0
    for picture in pictures:
        canvas.paste(picture, (x, 0))
        x += picture.width
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def _one_image(images: list[dict[str, Any]], context: SourceContext) -> dict[str, Any] | None:
    """The single image Florence-2 sees for a row, or None to drop the row (see `SourceContext`)."""
    if len(images) == 1:
        return images[0]
    if not images:
        return _blank_image() if context.no_image_policy == "blank" else None
    if context.multi_image_policy == "first":
        return images[0]
    return _side_by_side(images) if context.multi_image_policy == "concat" else None


def _convert_cauldron(
    batch: dict[str, list[Any]], indices: list[int], context: SourceContext
) -> dict[str, list[Any]]:
    """Each user -> assistant turn becomes one example about the row's image (Florence-2 has no chat
    history, so earlier turns are not part of the prompt)."""
    out: dict[str, list[Any]] = {column: [] for column in STANDARD_COLUMNS}
    for index, images, turns in zip(indices, batch["images"], batch["texts"], strict=True):
        image = _one_image(images or [], context)
        if image is None:
            continue
        for number, turn in enumerate(turns or []):
            answer = (turn["assistant"] or "").strip()
            out["id"].append(f"{context.name}-{context.split}-{index}-{number}")
            out["image"].append(image)
            out["image_id"].append(
                image_digest(image) or f"unreadable-{context.name}-{context.split}-{index}"
            )
            out["prompt"].append((turn["user"] or "").strip())
            out["target"].append(answer)
            out["answers"].append([answer])
            out["tags"].append([turn["source"]] if turn.get("source") else [])
            out["source"].append(context.name)
    return out


def _describe_cauldron(rows: Dataset, context: SourceContext) -> str:
    lengths = np.concatenate(
        [
            pc.list_value_length(table["images"]).fill_null(0).to_numpy()
            for table in rows.select_columns(["images"]).with_format("arrow").iter(batch_size=10_000)
        ]
        or [np.zeros(0, dtype=np.int64)]
    )
    none, several = int((lengths == 0).sum()), int((lengths > 1).sum())
    drop = {"skip": "skipped"}
    return (
        f"{context.name} ({context.split}): {len(lengths)} rows; {none} without image "
        f"({drop.get(context.no_image_policy, 'kept')}: no_image_policy={context.no_image_policy}), "
        f"{several} with several images "
        f"({drop.get(context.multi_image_policy, 'kept')}: multi_image_policy={context.multi_image_policy})"
    )


register_task(
    Task(
        name="cauldron",
        description="A HuggingFaceM4/the_cauldron subset (dataset_config); one example per conversation turn.",
        default_dataset="HuggingFaceM4/the_cauldron",
        image_column="images",
        required_columns=("images", "texts"),
        convert_batch=_convert_cauldron,
        metrics=("levenshtein", "exact_match"),
        example_prompt="Question: Which stage comes after the egg?\nAnswer with the letter.",
        prompt_format="{prompt}",  # each user turn as is: no task token
        image_feature=[Image(decode=False)],  # a list of images per row
        subset_metrics=CAULDRON_SUBSET_METRICS,
        describe_rows=_describe_cauldron,
    )
)


# --- Docmatix ---------------------------------------------------------------------------------------------

# HuggingFaceM4/Docmatix (dataset card `configs`, commit 83fbac1, July 2024; dataset viewer): config `images`
# (split train, ~1.27M rows, one PDF per row: its page images + its Q/A turns; 2.4M images, 9.5M Q/A pairs),
# `pdf` (the same rows with PDF bytes instead of images: not usable here) and `zero-shot-exp` (train 1,700 /
# test 200 rows). `images` rows are in The Cauldron's layout, so the Cauldron converter serves once each turn
# is checked to be a {user, assistant, source} mapping. Set `dataset_config: images`. Prompts are `<DocVQA>` +
# question, as in the DocVQA task.
DOCMATIX_TURN_KEYS = ("user", "assistant")


def _convert_docmatix(
    batch: dict[str, list[Any]], indices: list[int], context: SourceContext
) -> dict[str, list[Any]]:
    for index, turns in zip(indices, batch["texts"], strict=True):
        for number, turn in enumerate(turns or []):
            if not isinstance(turn, Mapping) or any(key not in turn for key in DOCMATIX_TURN_KEYS):
                raise RecipeError(
                    f"{context.name} ({context.split}) row {index}, turn {number}: expected a mapping with keys "
                    f"{', '.join(DOCMATIX_TURN_KEYS)} (Docmatix / The Cauldron layout), got {turn!r:.200}"
                )
    out = _convert_cauldron(batch, indices, context)
    # The DocVQA task's prompt, so that a Docmatix stage and a DocVQA stage train one and the same behaviour.
    out["prompt"] = [DOCVQA_PROMPT + prompt if prompt else "" for prompt in out["prompt"]]
    return out


register_task(
    Task(
        name="docmatix",
        description="HuggingFaceM4/Docmatix (dataset_config: images): one example per Q/A turn of each PDF.",
        default_dataset="HuggingFaceM4/Docmatix",
        image_column="images",
        required_columns=("images", "texts"),
        convert_batch=_convert_docmatix,
        metrics=("anls", "exact_match"),
        example_prompt=DOCVQA_PROMPT + "What is the invoice number?",
        prompt_format=DOCVQA_PROMPT + "{question}",  # each user turn behind the DocVQA task token
        image_feature=[Image(decode=False)],
        describe_rows=_describe_cauldron,
    )
)


# --- Your own data ----------------------------------------------------------------------------------------

VQA_PROMPT = "<VQA>"  # task prefix for `question` rows, like the DocVQA recipe's `<DocVQA>`


def _gold_list(value: Any) -> list[str]:
    """Gold answers from `answers` or `answer`, whichever JSON type the user wrote (list, string, number)."""
    if value is None:
        return []
    return [str(a) for a in value] if isinstance(value, list) else [str(value)]


def _convert_vqa(
    batch: dict[str, list[Any]], indices: list[int], context: SourceContext
) -> dict[str, list[Any]]:
    ids = _row_ids(batch, indices, context)
    if "prompt" in batch:  # the user's full prompt, used as is
        prompts = [(p or "").strip() for p in batch["prompt"]]
    else:
        prompts = [VQA_PROMPT + (q or "").strip() for q in batch["question"]]
    answers = [_gold_list(golds) for golds in batch["answers" if "answers" in batch else "answer"]]
    return {
        "id": ids,
        "image": batch["image"],
        "image_id": _image_ids(batch["image"], ids),
        "prompt": prompts,
        "target": [golds[0] if golds else "" for golds in answers],
        "answers": answers,
        "tags": [[] for _ in ids],
        "source": [context.name] * len(ids),
    }


def _convert_text(
    batch: dict[str, list[Any]], indices: list[int], context: SourceContext, prompt: str, column: str
) -> dict[str, list[Any]]:
    """Image -> text tasks (captioning, OCR) with Florence-2's own task prompt, or a per-row `prompt`."""
    ids = _row_ids(batch, indices, context)
    texts = [(t or "").strip() for t in batch[column]]
    return {
        "id": ids,
        "image": batch["image"],
        "image_id": _image_ids(batch["image"], ids),
        "prompt": [(p or prompt) for p in batch["prompt"]] if "prompt" in batch else [prompt] * len(ids),
        "target": texts,
        "answers": [[t] for t in texts],
        "tags": [[] for _ in ids],
        "source": [context.name] * len(ids),
    }


def _object_lists(objects: Any) -> tuple[list[Any], list[Any]]:
    """(boxes, labels) from `[{"bbox", "label"}, ...]` (JSON lines) or `{"bbox": [...], "label": [...]}`
    (the columnar layout of a datasets `Sequence` of dicts)."""
    if isinstance(objects, Mapping):
        return list(objects.get("bbox") or []), list(objects.get("label") or [])
    objects = objects or []
    return [o.get("bbox") for o in objects], [o.get("label") for o in objects]


def _convert_boxes(
    batch: dict[str, list[Any]],
    indices: list[int],
    context: SourceContext,
    prompt: str,
    caption_column: str | None,
) -> dict[str, list[Any]]:
    """Detection / grounding: pixel boxes -> `label<loc_x0><loc_y0><loc_x1><loc_y1>` targets."""
    ids = _row_ids(batch, indices, context)
    targets = []
    for row_id, image, objects in zip(ids, batch["image"], batch["objects"], strict=True):
        boxes, labels = _object_lists(objects)
        targets.append(format_detection_target(boxes, labels, image_size(image), f"{context.name} {row_id}"))
    if caption_column is None:
        prompts = [prompt] * len(ids)
    else:
        prompts = [prompt + (c or "").strip() for c in batch[caption_column]]
    return {
        "id": ids,
        "image": batch["image"],
        "image_id": _image_ids(batch["image"], ids),
        "prompt": prompts,
        "target": targets,
        "answers": [[t] for t in targets],  # scored after parsing, see `DetectionMetrics`
        "tags": [[] for _ in ids],
        "source": [context.name] * len(ids),
    }


register_task(
    Task(
        name="vqa",
        description="Your VQA data: image, prompt (used as is) or question (prefixed <VQA>), answer or answers.",
        default_dataset=None,
        image_column="image",
        required_columns=("image", ("prompt", "question"), ("answers", "answer")),
        convert_batch=_convert_vqa,
        metrics=("anls", "vqa_accuracy", "exact_match", "levenshtein"),
        example_prompt=VQA_PROMPT + "What is the total amount?",
        prompt_format=VQA_PROMPT + "{question}",  # rows with a `prompt` column: recorded as "{prompt}"
    )
)
register_task(
    Task(
        name="caption",
        description="Your captioning data: image, caption (optional prompt; default <CAPTION>).",
        default_dataset=None,
        image_column="image",
        required_columns=("image", "caption"),
        convert_batch=partial(_convert_text, prompt="<CAPTION>", column="caption"),
        metrics=("levenshtein", "exact_match"),
        example_prompt="<CAPTION>",
        prompt_format="<CAPTION>",
    )
)
register_task(
    Task(
        name="ocr",
        description="Your OCR data: image, text (optional prompt; default <OCR>).",
        default_dataset=None,
        image_column="image",
        required_columns=("image", "text"),
        convert_batch=partial(_convert_text, prompt="<OCR>", column="text"),
        metrics=("levenshtein", "exact_match"),
        example_prompt="<OCR>",
        prompt_format="<OCR>",
    )
)
register_task(
    Task(
        name="detection",
        description="Your object detection data: image, objects [{bbox: [x0, y0, x1, y1] in pixels, label}].",
        default_dataset=None,
        image_column="image",
        required_columns=("image", "objects"),
        convert_batch=partial(_convert_boxes, prompt="<OD>", caption_column=None),
        metrics=(),
        example_prompt="<OD>",
        prompt_format="<OD>",
        box_task="<OD>",
    )
)
register_task(
    Task(
        name="grounding",
        description="Your phrase grounding data: image, caption, objects [{bbox in pixels, label: the phrase}].",
        default_dataset=None,
        image_column="image",
        required_columns=("image", "caption", "objects"),
        convert_batch=partial(
            _convert_boxes, prompt="<CAPTION_TO_PHRASE_GROUNDING>", caption_column="caption"
        ),
        metrics=(),
        example_prompt="<CAPTION_TO_PHRASE_GROUNDING>A red circle next to a blue square.",
        prompt_format="<CAPTION_TO_PHRASE_GROUNDING>{caption}",
        box_task="<CAPTION_TO_PHRASE_GROUNDING>",
    )
)
