"""Evaluate a Florence-2 checkpoint on a dataset split: predictions, ANLS, the official submission, a report.

    python recipes/evaluate.py --model_name_or_path outputs/docvqa-base \
        --dataset_name HuggingFaceM4/DocumentVQA --split validation --output_dir eval/docvqa-base

writes to OUTPUT_DIR:
  predictions.jsonl  one line per question: id, question, prediction, gold answers, per-item scores
  metrics.json       ANLS (`anls`, 0..1), Levenshtein similarity, exact match, overall and per question type,
                     with the number of items, scored and skipped (questions without gold answers)
  submission.json    the official DocVQA format, [{"questionId": int, "answer": str}] (test split too)
  report.html        per-type bar chart and the worst examples with thumbnails

`--model_name_or_path` is a checkpoint folder, a Hub id or a LoRA adapter folder. With
`--baseline_model_name_or_path BEFORE` the second checkpoint is evaluated on the same items into
OUTPUT_DIR/baseline/ and OUTPUT_DIR/comparison.html lists the answers that changed.

Several GPUs (each example generated and scored once):

    accelerate launch --num_processes 8 recipes/evaluate.py --model_name_or_path ... --output_dir ...
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from pathlib import Path

from accelerate import PartialState
from accelerate.utils import parse_flag_from_env

from florence_recipes.builders import build_offline_fixtures
from florence_recipes.data import get_task, load_task_split
from florence_recipes.errors import RecipeError
from florence_recipes.evaluation import evaluate_checkpoint, parse_evaluation_args, write_evaluation
from florence_recipes.report import write_comparison_report, write_report
from florence_recipes.training import run_recipe

logger = logging.getLogger(__name__)


def main() -> None:
    model_args, data_args, eval_args = parse_evaluation_args()
    # As `Accelerator` does: `accelerate launch --cpu` (or the variable) keeps every process on the CPU.
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        level=logging.INFO if state.is_main_process else logging.WARNING,
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != state.num_processes:
        # Without GPUs, torchrun's processes each run alone unless accelerate is told to use CPUs: every
        # one would generate the whole split and write the same files.
        raise RecipeError(
            f"{launched} processes were launched but accelerate set up {state.num_processes}; on a "
            "machine without GPUs set ACCELERATE_USE_CPU=1 (or launch with --num_processes 1)"
        )

    task = get_task(data_args.task)
    if task.box_task is not None:
        raise RecipeError(
            f"task {task.name!r} is scored with box mAP, which this script does not compute; evaluate it with "
            "the training recipe (--do_train false --do_eval true) and look at its boxes with recipes/predict.py"
        )
    metric_names = task.metrics_for(data_args.dataset_config)
    if data_args.build_offline_fixtures:
        with state.main_process_first():
            build_offline_fixtures(model_args.model_name_or_path, data_args.dataset_name, task.name)
    with state.main_process_first():
        dataset = load_task_split(
            task,
            data_args.dataset_name,
            data_args.eval_split,
            dataset_config=data_args.dataset_config,
            max_samples=data_args.max_eval_samples,
            num_proc=data_args.preprocessing_num_workers,
            no_image_policy=data_args.no_image_policy,
            multi_image_policy=data_args.multi_image_policy,
        )
    source = f"{data_args.dataset_name} ({data_args.eval_split})"
    logger.info("%s: %d examples on %d process(es)", source, len(dataset), state.num_processes)

    runs = {"": model_args.model_name_or_path}
    if eval_args.baseline_model_name_or_path:
        runs["baseline"] = eval_args.baseline_model_name_or_path
    results = {}
    for subdir, checkpoint in runs.items():
        records, summary = evaluate_checkpoint(
            dataclasses.replace(model_args, model_name_or_path=checkpoint),
            dataset,
            metric_names,
            eval_args,
            data_args.max_target_length,
            state,
        )
        metrics = {
            "model": checkpoint,
            "dataset": data_args.dataset_name,
            "dataset_config": data_args.dataset_config,
            "split": data_args.eval_split,
            "task": task.name,
            **summary,
        }
        results[subdir] = (checkpoint, records, metrics)

    if state.is_main_process:
        output_dir = Path(eval_args.output_dir)
        for subdir, (checkpoint, records, metrics) in results.items():
            write_evaluation(output_dir / subdir, records, metrics)
            write_report(
                output_dir / subdir,
                records,
                metrics,
                images=lambda i: dataset[i]["image"],
                metric_names=metric_names,
                title=f"{checkpoint} on {source}",
                subtitle=f"task {task.name}",
                gallery_size=eval_args.gallery_size,
            )
            headline = {k: metrics[k] for k in (*metric_names, "count", "skipped") if k in metrics}
            logger.info("%s: %s -> %s", checkpoint, headline, output_dir / subdir)
        if "baseline" in results:
            baseline, before, before_metrics = results["baseline"]
            checkpoint, after, after_metrics = results[""]
            path = write_comparison_report(
                output_dir,
                before,
                after,
                before_metrics,
                after_metrics,
                images=lambda i: dataset[i]["image"],
                metric_names=metric_names,
                title=f"{baseline} vs {checkpoint}",
                labels=("baseline", "model"),
                subtitle=f"{source}, task {task.name}",
                gallery_size=eval_args.gallery_size,
            )
            logger.info("Comparison: %s", path)
    state.destroy_process_group()


if __name__ == "__main__":
    run_recipe(main)
