"""Evaluate a checkpoint on a dataset split: the files users keep, scored exactly as the training recipe scores.

`evaluate_model` runs `FlorenceTrainer`'s evaluation (the recipe's generation, batching, distributed gathering
and `florence_recipes.scoring` scorer) on the split, so `metrics.json` holds the recipe's `eval_*` numbers for
the same checkpoint. Every task the recipes train is scored: ANLS and the other text metrics (per source for a
mixture), COCO mAP for detection and grounding. Items of a hidden test split have no gold answers: they are
predicted (for the official submission) but not scored. Items dropped as bad samples (`on_bad_sample: skip`)
score 0 in the metrics and get an empty answer in the submission. The task, `max_target_length` and
generation settings default to the checkpoint's training record (`florence_recipes.provenance`).
`write_evaluation` writes predictions.jsonl, metrics.json and submission.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from accelerate.utils import parse_flag_from_env
from datasets import Dataset

from florence_recipes.configs.training import (
    DataArguments,
    FlorenceTrainingArguments,
    ModelArguments,
    RecipeArgumentParser,
)
from florence_recipes.data.loading import DataSource
from florence_recipes.data.validation import DroppedItem
from florence_recipes.errors import RecipeError
from florence_recipes.evaluation.scoring import TextScorer
from florence_recipes.models.inference import load_for_inference
from florence_recipes.models.loading import set_generation_length
from florence_recipes.models.provenance import TrainingRecord, resolve_prompt
from florence_recipes.training.trainer import FlorenceTrainer

logger = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.jsonl"
METRICS_FILE = "metrics.json"
SUBMISSION_FILE = "submission.json"
# A Florence-2 task token such as <DocVQA> in front of the user's text.
_TASK_TOKEN = re.compile(r"^<[^<>\s]+>")
# DataArguments that only concern training: refused when set, rather than silently ignored.
TRAINING_ONLY_DATA_OPTIONS = ("train_split", "max_train_samples", "mixture_stopping_strategy")


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

    def trainer_arguments(self, max_target_length: int) -> FlorenceTrainingArguments:
        """The Trainer arguments of an evaluation-only run (the launched processes are checked there too)."""
        return FlorenceTrainingArguments(
            output_dir=self.output_dir,
            do_train=False,
            do_eval=True,
            per_device_eval_batch_size=self.per_device_eval_batch_size,
            generation_max_length=self.generation_max_length or max_target_length,
            generation_num_beams=self.generation_num_beams,
            dataloader_num_workers=self.dataloader_num_workers,
            # As `Accelerator` does: `accelerate launch --cpu` (or the variable) keeps every process on the CPU.
            use_cpu=parse_flag_from_env("ACCELERATE_USE_CPU"),
            report_to="none",
        )


def parse_evaluation_args(
    args: list[str] | None = None,
) -> tuple[ModelArguments, DataArguments, EvaluationArguments]:
    parser = RecipeArgumentParser((ModelArguments, DataArguments, EvaluationArguments))
    # `--split` reads better than `--eval_split` for a script that only evaluates; both set the same field.
    parser.add_argument(
        "--split", dest="eval_split", default=argparse.SUPPRESS, help="Split to evaluate (= --eval_split)."
    )
    return parser.parse(args)


def given_options(args: Sequence[str]) -> set[str]:
    """The options a user set, on the command line (`--x 1`, `--x=1`) or in its `--config` YAML: what the
    checkpoint's training record must not override."""
    given = {arg[2:].split("=", 1)[0] for arg in args if arg.startswith("--")}
    config, _ = RecipeArgumentParser((EvaluationArguments,))._split_config_flag(list(args))
    if config is not None and Path(config).is_file():
        given |= set(yaml.safe_load(Path(config).read_text(encoding="utf-8")) or {})
    return given


def apply_training_record(
    record: TrainingRecord | None,
    data_args: DataArguments,
    eval_args: EvaluationArguments,
    given: set[str],
) -> None:
    """Default the task, `max_target_length` and generation settings to the checkpoint's training record;
    an explicit `--task` it was not trained on is kept, with one warning line (`resolve_prompt`)."""
    if record is None or data_args.dataset_mixture is not None:
        return
    if "task" in given:
        warning = resolve_prompt(data_args.task, record).warning
        if warning:
            logger.warning(warning)
    else:
        data_args.task = record.sources[0].task
        logger.info("Task %s from the checkpoint's training record", data_args.task)
    if "max_target_length" not in given:
        data_args.max_target_length = record.max_target_length
    if "generation_max_length" not in given and record.generation_max_length:
        eval_args.generation_max_length = record.generation_max_length
    if "generation_num_beams" not in given and record.generation_num_beams:
        eval_args.generation_num_beams = record.generation_num_beams


def reject_training_options(data_args: DataArguments) -> None:
    """One line for a training-only data option given to an evaluation, instead of ignoring it."""
    defaults = {f.name: f.default for f in dataclasses.fields(DataArguments)}
    given = [name for name in TRAINING_ONLY_DATA_OPTIONS if getattr(data_args, name) != defaults[name]]
    if given:
        raise RecipeError(
            f"{', '.join(given)}: training option(s) that an evaluation does not use; pick the evaluated split "
            "with --split (per mixture entry: eval_split) and cap it with --max_eval_samples"
        )


@dataclass
class Evaluation:
    """One checkpoint's results on the split: a record per item (predictions.jsonl) and the metrics."""

    checkpoint: str
    records: list[dict[str, Any]]  # the evaluated rows, in dataset order
    metrics: dict[str, Any]
    metric_names: tuple[str, ...]  # the scorer's, headline first
    dropped: list[dict[str, Any]] = field(default_factory=list)  # bad samples: empty answer, scored 0


def evaluate_model(
    model_args: ModelArguments,
    dataset: Dataset,
    sources: list[DataSource],
    training_args: FlorenceTrainingArguments,
    max_target_length: int,
    dropped: Sequence[DroppedItem] = (),
) -> Evaluation:
    """Generate and score every item of `dataset` with the checkpoint of `model_args`, as the recipe's eval does;
    the `dropped` bad samples score 0 (when they have gold answers) and are answered with "" in the files."""
    model, processor = load_for_inference(model_args)
    set_generation_length(model, training_args.generation_max_length)
    trainer = FlorenceTrainer(
        model=model,
        args=training_args,
        processor=processor,
        sources=sources,
        eval_dataset=dataset,
        max_target_length=max_target_length,
        eval_dropped=list(dropped),
    )
    texts, items, trainer_metrics = trainer.predict_items(metric_key_prefix="eval")
    metric_names = trainer.scorer.metric_names
    records = build_records(dataset, texts)
    for record, scores in zip(records, items, strict=True):
        record["scores"] = scores
        record["score"] = None if scores is None else scores[metric_names[0]]
    metrics = {key.removeprefix("eval_"): value for key, value in trainer_metrics.items()}
    metrics |= summarize(records, metric_names)
    scored_zero = isinstance(trainer.scorer, TextScorer)  # mAP has no per-item scores
    skipped = [dropped_record(item, metric_names if scored_zero else ()) for item in dropped]
    return Evaluation(model_args.model_name_or_path, records, metrics, metric_names, skipped)


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
