"""The files of an evaluation: one record per item (predictions.jsonl), metrics.json, the official DocVQA
submission.json, and per-question-type summaries. Items dropped as bad samples are put back in place with an
empty answer, so every question of the split is answered."""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset

from florence_recipes.data.validation import DroppedItem

PREDICTIONS_FILE = "predictions.jsonl"
METRICS_FILE = "metrics.json"
SUBMISSION_FILE = "submission.json"
# A Florence-2 task token such as <DocVQA> in front of the user's text.
_TASK_TOKEN = re.compile(r"^<[^<>\s]+>")


def dropped_record(item: DroppedItem, metric_names: Sequence[str]) -> dict[str, Any]:
    """The predictions.jsonl record of a bad sample: no prediction, 0 for every item metric if it has gold."""
    scores = {m: 0.0 for m in metric_names} if item.scorable and metric_names else None
    return {
        "id": item.id,
        "image_id": None,
        "question": _TASK_TOKEN.sub("", item.prompt).strip(),
        "prediction": "",
        "answers": item.answers or None,
        "tags": [],
        "scores": scores,
        "score": None if scores is None else 0.0,
        "bad_sample": item.reason,
        "position": item.position,
    }


def with_dropped(
    records: Sequence[dict[str, Any]], dropped: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Every item of the checked split in its order: the evaluated records with the bad samples put back."""
    merged: list[dict[str, Any]] = []
    kept = iter(records)
    positions = {record["position"]: record for record in dropped}
    for position in range(len(records) + len(dropped)):
        if position in positions:
            merged.append({k: v for k, v in positions[position].items() if k != "position"})
        else:
            merged.append(next(kept))
    return merged


def build_records(dataset: Dataset, predictions: Sequence[str]) -> list[dict[str, Any]]:
    """One record per row (the lines of predictions.jsonl), unscored; images are not decoded."""
    rows = dataset.select_columns(["id", "image_id", "prompt", "answers", "tags"]).to_list()
    return [
        {
            "id": row["id"],
            "image_id": row["image_id"],
            "question": _TASK_TOKEN.sub("", row["prompt"]).strip(),
            "prediction": prediction,
            "answers": row["answers"] or None,  # None: hidden, e.g. the DocVQA test split
            "tags": row["tags"] or [],
        }
        for row, prediction in zip(rows, predictions, strict=True)
    ]


def summarize(records: Sequence[dict[str, Any]], metrics: Sequence[str]) -> dict[str, Any]:
    """Counts of items scored and not, and each item metric's mean per tag (DocVQA question type).

    An item with several tags counts towards each of them, as in the official per-type breakdown. (The
    overall means are the Trainer's, from the scorer; a corpus metric such as mAP has no per-item scores.)
    """
    scored = [r for r in records if r["scores"] is not None]
    summary: dict[str, Any] = {"skipped": sum(not r["answers"] for r in records)}
    if not scored:
        if summary["skipped"] == len(records):
            summary["note"] = (
                "no gold answers in this split: predictions and submission written, nothing scored"
            )
        return summary
    if summary["skipped"]:
        summary["note"] = f"{summary['skipped']} item(s) without gold answers were not scored"
    by_tag: dict[str, list[dict[str, Any]]] = {}
    for record in scored:
        for tag in dict.fromkeys(record["tags"]):
            by_tag.setdefault(tag, []).append(record)
    summary["per_type"] = {
        tag: {"count": len(items), **_means(items, metrics)} for tag, items in sorted(by_tag.items())
    }
    return summary


def _means(records: Sequence[dict[str, Any]], metrics: Sequence[str]) -> dict[str, float]:
    return {m: statistics.fmean(r["scores"][m] for r in records) for m in metrics}


def submission_entries(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The official DocVQA submission format: `[{"questionId": int, "answer": str}, ...]`."""
    return [
        {"questionId": int(r["id"]) if r["id"].isdigit() else r["id"], "answer": r["prediction"]}
        for r in records
    ]


def write_evaluation(
    output_dir: Path,
    records: Sequence[dict[str, Any]],
    metrics: dict[str, Any],
    dropped: Sequence[dict[str, Any]] = (),
) -> None:
    """predictions.jsonl (one record per line), metrics.json and submission.json in `output_dir`; `dropped`
    (`dropped_record`s) are put back in place, so every question of the split is answered."""
    records = with_dropped(records, dropped)
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / PREDICTIONS_FILE, "w", encoding="utf-8") as jsonl:
        for record in records:
            jsonl.write(json.dumps(record, ensure_ascii=False) + "\n")
    (output_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    (output_dir / SUBMISSION_FILE).write_text(
        json.dumps(submission_entries(records), ensure_ascii=False) + "\n", encoding="utf-8"
    )
