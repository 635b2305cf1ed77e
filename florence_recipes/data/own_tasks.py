"""The tasks of your own data: VQA, captioning, OCR, object detection, phrase grounding.

| task        | rows                                                      | prompt                          | metrics |
|-------------|-----------------------------------------------------------|---------------------------------|---------|
| `vqa`       | your data: `image`, `prompt` or `question`, `answer(s)`   | prompt, or `<VQA>` + question   | ANLS, VQA accuracy |
| `caption`   | your data: `image`, `caption` (optional `prompt`)         | `<CAPTION>`                     | Levenshtein similarity |
| `ocr`       | your data: `image`, `text` (optional `prompt`)            | `<OCR>`                         | Levenshtein similarity |
| `detection` | your data: `image`, `objects: [{bbox, label}]` (pixels)   | `<OD>`                          | COCO mAP |
| `grounding` | your data: `image`, `caption`, `objects: [{bbox, label}]` | `<CAPTION_TO_PHRASE_GROUNDING>` | COCO mAP |
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

from florence_recipes.data.boxes import format_detection_target
from florence_recipes.data.images import image_size
from florence_recipes.data.tasks import SourceContext, Task, image_ids_for, register_task, row_ids

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
    ids = row_ids(batch, indices, context)
    if "prompt" in batch:  # the user's full prompt, used as is
        prompts = [(p or "").strip() for p in batch["prompt"]]
    else:
        prompts = [VQA_PROMPT + (q or "").strip() for q in batch["question"]]
    answers = [_gold_list(golds) for golds in batch["answers" if "answers" in batch else "answer"]]
    return {
        "id": ids,
        "image": batch["image"],
        "image_id": image_ids_for(batch["image"], ids),
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
    ids = row_ids(batch, indices, context)
    texts = [(t or "").strip() for t in batch[column]]
    return {
        "id": ids,
        "image": batch["image"],
        "image_id": image_ids_for(batch["image"], ids),
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
    ids = row_ids(batch, indices, context)
    targets = []
    for row_id, image, objects in zip(ids, batch["image"], batch["objects"], strict=True):
        boxes, labels = _object_lists(objects)
        try:
            size = image_size(image)
        except (OSError, ValueError, AttributeError, TypeError, KeyError):
            # Missing or unreadable: no target can be placed, and the bad-sample check names the image's problem.
            targets.append("")
            continue
        targets.append(format_detection_target(boxes, labels, size, f"{context.name} {row_id}"))
    if caption_column is None:
        prompts = [prompt] * len(ids)
    else:
        prompts = [prompt + (c or "").strip() for c in batch[caption_column]]
    return {
        "id": ids,
        "image": batch["image"],
        "image_id": image_ids_for(batch["image"], ids),
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
