"""The tasks of the Hub datasets the recipes know: DocVQA, The Cauldron's subsets, Docmatix.

| task        | rows                                                      | prompt                          | metrics |
|-------------|-----------------------------------------------------------|---------------------------------|---------|
| `docvqa`    | HuggingFaceM4/DocumentVQA                                 | `<DocVQA>` + question           | ANLS |
| `cauldron`  | any HuggingFaceM4/the_cauldron subset (`dataset_config`)  | each user turn                  | by subset family: `CAULDRON_FAMILIES` |
| `docmatix`  | HuggingFaceM4/Docmatix (`dataset_config: images`)         | `<DocVQA>` + each user turn     | ANLS |
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from functools import cache
from typing import Any

import numpy as np
import pyarrow.compute as pc
from datasets import Dataset, Image
from PIL import Image as PILImage

from florence_recipes.data.images import to_rgb
from florence_recipes.data.tasks import (
    STANDARD_COLUMNS,
    SourceContext,
    Task,
    check_id_hint,
    image_digest,
    image_ids_for,
    register_task,
)
from florence_recipes.data.validation import as_text_list
from florence_recipes.errors import RecipeError

# --- DocVQA ---------------------------------------------------------------------------------------------

DOCVQA_PROMPT = "<DocVQA>"  # the prompt prefix of the released DocVQA fine-tune and of the blog recipe


def _convert_docvqa(
    batch: dict[str, list[Any]], indices: list[int], context: SourceContext
) -> dict[str, list[Any]]:
    # None marks answers that are not strings; they and empty questions are reported by `check_samples`.
    answers = [as_text_list(a) for a in batch["answers"]]
    ids = [str(q) for q in batch["questionId"]]
    image_ids = image_ids_for(batch["image"], ids)
    check_id_hint(batch["docId"], image_ids, "docId", context)
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
