"""Evaluate a checkpoint on a dataset split, scored exactly as the training recipe scores.

`evaluate_model` runs `FlorenceTrainer`'s evaluation (the recipe's generation, batching, distributed gathering
and `florence_recipes.evaluation.scoring` scorer) on the split, so `metrics.json` holds the recipe's `eval_*`
numbers for the same checkpoint. Every task the recipes train is scored: ANLS and the other text metrics (per
source for a mixture), COCO mAP for detection and grounding. Items of a hidden test split have no gold answers:
they are predicted (for the official submission) but not scored. Items dropped as bad samples
(`on_bad_sample: skip`) score 0 in the metrics and get an empty answer in the submission. The task,
`max_target_length` and generation settings default to the checkpoint's training record
(`florence_recipes.models.provenance`). The files are written by `florence_recipes.evaluation.records`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset

from florence_recipes.configs.data import DataArguments
from florence_recipes.configs.evaluation import EvaluationArguments
from florence_recipes.configs.model import ModelArguments
from florence_recipes.configs.training import FlorenceTrainingArguments
from florence_recipes.data.sources import DataSource
from florence_recipes.data.validation import DroppedItem
from florence_recipes.evaluation.records import build_records, dropped_record, summarize, write_evaluation
from florence_recipes.evaluation.report import write_report
from florence_recipes.evaluation.scoring import TextScorer
from florence_recipes.models.inference import load_for_inference
from florence_recipes.models.loading import set_generation_length
from florence_recipes.models.provenance import TrainingRecord, resolve_prompt
from florence_recipes.training.trainer import FlorenceTrainer

logger = logging.getLogger(__name__)


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
    return _evaluation(
        trainer, model_args.model_name_or_path, dataset, texts, items, trainer_metrics, dropped
    )


def _evaluation(
    trainer: FlorenceTrainer,
    checkpoint: str,
    dataset: Dataset,
    texts: list[str],
    items: list[dict[str, float] | None],
    trainer_metrics: dict[str, Any],
    dropped: Sequence[DroppedItem],
) -> Evaluation:
    """Records (one per item, with its scores), metrics without the `eval_` prefix, and the skipped items."""
    metric_names = trainer.scorer.metric_names
    records = build_records(dataset, texts)
    for record, scores in zip(records, items, strict=True):
        record["scores"] = scores
        record["score"] = None if scores is None else scores[metric_names[0]]
    metrics = {key.removeprefix("eval_"): value for key, value in trainer_metrics.items()}
    metrics |= summarize(records, metric_names)
    scored_zero = isinstance(trainer.scorer, TextScorer)  # mAP has no per-item scores
    skipped = [dropped_record(item, metric_names if scored_zero else ()) for item in dropped]
    return Evaluation(checkpoint, records, metrics, metric_names, skipped)


def write_run_evaluation(
    trainer: FlorenceTrainer,
    dataset: Dataset,
    eval_metrics: dict[str, Any],
    output_dir: Path,
    dropped: Sequence[DroppedItem] = (),
) -> Path | None:
    """The files `recipes/evaluate.py` writes (predictions.jsonl, metrics.json, submission.json, report.html),
    for the recipe's final evaluation, from the predictions it generated; None when it scored nothing."""
    last = trainer.last_eval_items()
    if last is None:
        return None
    result = _evaluation(trainer, trainer.args.output_dir, dataset, *last, eval_metrics, dropped)
    write_evaluation(output_dir, result.records, result.metrics, result.dropped)
    return write_report(
        output_dir,
        result.records,
        result.metrics,
        images=lambda i: dataset[i]["image"],
        metric_names=result.metric_names,
        title=f"{trainer.args.output_dir}: final evaluation",
        subtitle=", ".join(dict.fromkeys(source.task.name for source in trainer.sources)),
    )
