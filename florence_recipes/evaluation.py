"""Evaluate a checkpoint on a dataset split: batched generation, per-item scores and the files users keep.

`evaluate_checkpoint` generates an answer for every standard row (see `florence_recipes.data`), split across
`accelerate launch` processes with `split_between_processes` and gathered back in dataset order, so each
example is generated and scored exactly once whatever the number of processes. `score_records` scores the
items that have gold answers (a hidden test split has none: its predictions are still written, for the
official submission) and `write_evaluation` writes predictions.jsonl, metrics.json and submission.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accelerate import PartialState
from accelerate.utils import gather_object
from datasets import Dataset
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from florence_recipes.collator import Florence2Collator
from florence_recipes.configs import DataArguments, ModelArguments, RecipeArgumentParser
from florence_recipes.inference import decode_answers, generate_ids, load_for_inference
from florence_recipes.metrics import score_items
from florence_recipes.modeling import set_generation_length

logger = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.jsonl"
METRICS_FILE = "metrics.json"
SUBMISSION_FILE = "submission.json"
# A Florence-2 task token such as <DocVQA> in front of the user's text.
_TASK_TOKEN = re.compile(r"^<[^<>\s]+>")


@dataclass
class EvaluationArguments:
    """Where evaluation results go and how answers are generated."""

    output_dir: str = field(
        metadata={"help": "Folder for predictions.jsonl, metrics.json, submission.json and report.html."}
    )
    per_device_eval_batch_size: int = field(default=16, metadata={"help": "Images per generate() call."})
    generation_max_length: int | None = field(
        default=None, metadata={"help": "Longest answer in tokens (default: --max_target_length)."}
    )
    generation_num_beams: int | None = field(
        default=None, metadata={"help": "Beam search width (default: the checkpoint's generation config)."}
    )
    dataloader_num_workers: int = field(
        default=2, metadata={"help": "DataLoader worker processes that decode images and run the processor."}
    )
    baseline_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A second checkpoint (e.g. the model before fine-tuning) evaluated on the same items: its "
            "results go to OUTPUT_DIR/baseline/ and comparison.html shows the answers that changed."
        },
    )
    gallery_size: int = field(
        default=200, metadata={"help": "Examples shown with thumbnails in the HTML reports (worst first)."}
    )

    def __post_init__(self) -> None:
        for name in ("per_device_eval_batch_size", "gallery_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.dataloader_num_workers < 0:
            raise ValueError(f"dataloader_num_workers must be >= 0, got {self.dataloader_num_workers}")


def parse_evaluation_args(
    args: list[str] | None = None,
) -> tuple[ModelArguments, DataArguments, EvaluationArguments]:
    parser = RecipeArgumentParser((ModelArguments, DataArguments, EvaluationArguments))
    # `--split` reads better than `--eval_split` for a script that only evaluates; both set the same field.
    parser.add_argument(
        "--split", dest="eval_split", default=argparse.SUPPRESS, help="Split to evaluate (= --eval_split)."
    )
    return parser.parse(args)


def generate_predictions(
    model_args: ModelArguments,
    dataset: Dataset,
    eval_args: EvaluationArguments,
    max_target_length: int,
    state: PartialState,
) -> list[str]:
    """Answers of the checkpoint for every row of `dataset`, in dataset order, on every process."""
    model, processor = load_for_inference(model_args)
    set_generation_length(model, eval_args.generation_max_length or max_target_length)
    model.to(state.device)
    collator = Florence2Collator(processor, max_target_length=max_target_length)
    predictions: list[str] = []
    # Contiguous, unpadded shards: process k gets rows [start_k, end_k), so concatenating the gathered
    # shards in process order restores dataset order and no row is generated twice.
    with state.split_between_processes(dataset) as shard:
        loader = DataLoader(
            shard,
            batch_size=eval_args.per_device_eval_batch_size,
            collate_fn=collator,
            num_workers=eval_args.dataloader_num_workers,
        )
        progress = tqdm(
            loader,
            desc=f"Generating ({model_args.model_name_or_path})",
            disable=not state.is_local_main_process,
        )
        for batch in progress:
            ids = generate_ids(model, batch, num_beams=eval_args.generation_num_beams)
            predictions.extend(decode_answers(processor, ids))
    gathered = gather_object(predictions)
    if len(gathered) != len(dataset):
        raise RuntimeError(f"gathered {len(gathered)} predictions for {len(dataset)} rows")
    return gathered


def evaluate_checkpoint(
    model_args: ModelArguments,
    dataset: Dataset,
    metric_names: Sequence[str],
    eval_args: EvaluationArguments,
    max_target_length: int,
    state: PartialState,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(records, summary) of one checkpoint on `dataset`: generated, scored where golds exist, summarised."""
    predictions = generate_predictions(model_args, dataset, eval_args, max_target_length, state)
    records = build_records(dataset, predictions)
    score_records(records, metric_names)
    return records, summarize(records, metric_names)


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
            "score": None,
            "scores": None,
        }
        for row, prediction in zip(rows, predictions, strict=True)
    ]


def score_records(records: list[dict[str, Any]], metrics: Sequence[str]) -> None:
    """Fill `scores` (every metric) and `score` (the first, headline metric) of records with gold answers."""
    scored = [r for r in records if r["answers"]]
    if not scored:
        return
    predictions = [r["prediction"] for r in scored]
    references = [r["answers"] for r in scored]
    per_metric = {m: score_items(m, predictions, references) for m in metrics}
    for i, record in enumerate(scored):
        record["scores"] = {m: per_metric[m][i] for m in metrics}
        record["score"] = record["scores"][metrics[0]]


def summarize(records: Sequence[dict[str, Any]], metrics: Sequence[str]) -> dict[str, Any]:
    """Counts, the mean of each metric over scored items, and the same per tag (DocVQA question type).

    An item with several tags counts towards each of them, as in the official per-type breakdown.
    """
    scored = [r for r in records if r["scores"] is not None]
    summary: dict[str, Any] = {
        "count": len(records),
        "scored": len(scored),
        "skipped": len(records) - len(scored),
    }
    if not scored:
        summary["note"] = "no gold answers in this split: predictions and submission written, nothing scored"
        return summary
    if summary["skipped"]:
        summary["note"] = f"{summary['skipped']} item(s) without gold answers were not scored"
    summary.update(_means(scored, metrics))
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


def write_evaluation(output_dir: Path, records: Sequence[dict[str, Any]], metrics: dict[str, Any]) -> None:
    """predictions.jsonl (one record per line), metrics.json and submission.json in `output_dir`."""
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / PREDICTIONS_FILE, "w", encoding="utf-8") as jsonl:
        for record in records:
            jsonl.write(json.dumps(record, ensure_ascii=False) + "\n")
    (output_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    (output_dir / SUBMISSION_FILE).write_text(
        json.dumps(submission_entries(records), ensure_ascii=False) + "\n", encoding="utf-8"
    )
