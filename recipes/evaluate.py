"""Evaluate a Florence-2 checkpoint on a dataset split: predictions, ANLS, the official submission, a report.

    python recipes/evaluate.py --model_name_or_path outputs/docvqa-base \
        --dataset_name HuggingFaceM4/DocumentVQA --split validation --output_dir eval/docvqa-base

writes to OUTPUT_DIR:
  predictions.jsonl  one line per question: id, question, prediction, gold answers, per-item scores
  metrics.json       the training recipe's eval metrics for this checkpoint (ANLS `anls` 0..1, Levenshtein
                     similarity, exact match; per source for a mixture; mAP for detection/grounding), per
                     question type, and the number of items, scored and skipped (no gold answers)
  submission.json    the official DocVQA format, [{"questionId": int, "answer": str}] (test split too)
  report.html        per-type bar chart and the worst examples with thumbnails

The task, `--max_target_length` and the generation settings default to the checkpoint's training record (the
`florence_recipes.json` every recipe saves with a model); a `--task` it was not trained on gets one warning
line. With `--on_bad_sample skip`, unreadable items score 0 in the metrics (the mean over the readable ones is
`<metric>_over_readable`) and get an empty answer in submission.json.

Scoring is the training recipe's own (`FlorenceTrainer` evaluation with the same scorer), so `metrics.json`
equals the recipe's `eval_*` numbers for the same checkpoint, split and generation settings. The data options are
the recipe's (`--dataset_mixture`, `--streaming`, `--on_bad_sample`, ...); training-only ones are refused.
`--model_name_or_path` is a checkpoint folder, a Hub id or a LoRA adapter folder. With
`--baseline_model_name_or_path BEFORE` the second checkpoint is evaluated on the same items into
OUTPUT_DIR/baseline/ and OUTPUT_DIR/comparison.html lists the answers that changed.

Several GPUs (each example generated and scored once):

    accelerate launch --num_processes 8 recipes/evaluate.py --model_name_or_path ... --output_dir ...
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path

from florence_recipes.builders import build_offline_fixtures
from florence_recipes.cli import run_recipe, setup_logging
from florence_recipes.configs.evaluation import reject_training_options
from florence_recipes.configs.parser import given_options, parse_evaluation_args
from florence_recipes.data.sources import data_sources, load_eval_dataset
from florence_recipes.data.validation import bad_sample_metrics, check_samples
from florence_recipes.evaluation.records import write_evaluation
from florence_recipes.evaluation.report import write_comparison_report, write_report
from florence_recipes.models.provenance import read_record
from florence_recipes.training.evaluate import apply_training_record, evaluate_model

logger = logging.getLogger(__name__)


def main() -> None:
    model_args, data_args, eval_args = parse_evaluation_args()
    setup_logging()
    # The task, target length and generation settings the checkpoint was trained and evaluated with.
    record = read_record(model_args.model_name_or_path, model_args.model_revision)
    apply_training_record(record, data_args, eval_args, given_options(sys.argv[1:]))
    training_args = eval_args.trainer_arguments(data_args.max_target_length)
    setup_logging(training_args.should_log)

    ##################
    # Pre-flight checks
    ##################
    reject_training_options(data_args)
    sources = data_sources(data_args, training_args)  # one dataset, or the entries of dataset_mixture
    if data_args.build_offline_fixtures:
        with training_args.main_process_first(desc="building offline fixtures"):
            for source in sources:
                build_offline_fixtures(model_args.model_name_or_path, source.dataset, source.task.name)

    ##############
    # Load dataset
    ##############
    where = "eval split of " + ", ".join(dict.fromkeys(source.dataset for source in sources))
    with training_args.main_process_first(desc="dataset standardisation"):
        # A hidden test split has no answers: its items are predicted for the submission, not scored.
        dataset, bad_samples = check_samples(
            load_eval_dataset(sources, data_args),
            data_args.on_bad_sample,
            where,
            require_answer=False,
            num_proc=data_args.preprocessing_num_workers,
        )
    logger.info("%s: %d examples on %d process(es)", where, len(dataset), training_args.world_size)
    dropped = bad_samples.dropped if bad_samples else []
    if dropped:
        logger.warning(
            "%d eval item(s) skipped as bad samples: each scores 0 in the metrics (the mean over the readable "
            "items is <metric>_over_readable) and gets an empty answer in %s",
            len(dropped),
            "submission.json",
        )

    ######################################
    # Generate and score, as the recipe does
    ######################################
    checkpoints = {"": model_args.model_name_or_path}
    if eval_args.baseline_model_name_or_path:
        checkpoints["baseline"] = eval_args.baseline_model_name_or_path
    results = {}
    for subdir, checkpoint in checkpoints.items():
        results[subdir] = evaluate_model(
            dataclasses.replace(model_args, model_name_or_path=checkpoint),
            dataset,
            sources,
            training_args,
            data_args.max_target_length,
            dropped=dropped,
        )
        results[subdir].metrics = {
            "model": checkpoint,
            "dataset": data_args.dataset_name if data_args.dataset_mixture is None else "mixture",
            "dataset_config": data_args.dataset_config,
            "split": data_args.eval_split,
            "task": ", ".join(dict.fromkeys(source.task.name for source in sources)),
            **results[subdir].metrics,
            **bad_sample_metrics(bad_samples, prefix=""),
        }

    ###################
    # Files and reports
    ###################
    if not training_args.should_save:
        return
    output_dir = Path(eval_args.output_dir)
    title = f"{where} ({data_args.eval_split})"
    for subdir, result in results.items():
        write_evaluation(output_dir / subdir, result.records, result.metrics, result.dropped)
        write_report(
            output_dir / subdir,
            result.records,
            result.metrics,
            images=lambda i: dataset[i]["image"],
            metric_names=result.metric_names,
            title=f"{result.checkpoint} on {title}",
            subtitle=f"task {result.metrics['task']}",
            gallery_size=eval_args.gallery_size,
        )
        shown = (*result.metric_names, "count", "skipped", "unreadable")
        headline = {key: result.metrics[key] for key in shown if key in result.metrics}
        logger.info("%s: %s -> %s", result.checkpoint, headline, output_dir / subdir)
    if "baseline" in results:
        before, after = results["baseline"], results[""]
        path = write_comparison_report(
            output_dir,
            before.records,
            after.records,
            before.metrics,
            after.metrics,
            images=lambda i: dataset[i]["image"],
            metric_names=after.metric_names,
            title=f"{before.checkpoint} vs {after.checkpoint}",
            labels=("baseline", "model"),
            subtitle=f"{title}, task {after.metrics['task']}",
            gallery_size=eval_args.gallery_size,
        )
        logger.info("Comparison: %s", path)


if __name__ == "__main__":
    run_recipe(main)
