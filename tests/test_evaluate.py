"""recipes/evaluate.py end to end on the tiny fitted model and the synthetic DocVQA: the files it writes agree
with each other and with the dataset, the hidden test split still gets a submission, several processes give
the same results as one, and every task is scored exactly as the training recipe scores it."""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO_ROOT, run_recipe_subprocess
from datasets import load_dataset
from eval_helpers import fit_tiny_model

from florence_recipes.builders.datasets import (
    write_synthetic_cauldron,
    write_synthetic_detection,
    write_synthetic_vqa_jsonl,
)
from florence_recipes.configs.parser import parse_evaluation_args
from florence_recipes.evaluation.metrics import ITEM_METRICS

METRICS = ("anls", "levenshtein", "exact_match")
FAST = ("--generation_max_length", "32", "--dataloader_num_workers", "0", "--per_device_eval_batch_size", "5")


def evaluate(*args: str) -> subprocess.CompletedProcess[str]:
    """`python recipes/evaluate.py ...`: the documented single-process interface."""
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "recipes" / "evaluate.py"), *args, *FAST],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def read_run(folder: Path) -> tuple[list[dict[str, Any]], dict[str, Any], list[dict[str, Any]]]:
    lines = (folder / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    return (
        [json.loads(line) for line in lines],
        json.loads((folder / "metrics.json").read_text(encoding="utf-8")),
        json.loads((folder / "submission.json").read_text(encoding="utf-8")),
    )


@pytest.fixture(scope="module")
def validation_run(
    tmp_path_factory: pytest.TempPathFactory, fitted_model_dir: Path, tiny_model_dir: Path, docvqa_dir: Path
) -> Path:
    out = tmp_path_factory.mktemp("evaluate") / "out"
    evaluate(
        "--model_name_or_path", str(fitted_model_dir), "--dataset_name", str(docvqa_dir),
        "--split", "validation", "--output_dir", str(out),
        "--baseline_model_name_or_path", str(tiny_model_dir),
    )  # fmt: skip
    return out


def test_outputs_agree_with_each_other_and_the_dataset(validation_run: Path, docvqa_dir: Path) -> None:
    records, metrics, submission = read_run(validation_run)
    gold = load_dataset(str(docvqa_dir), split="validation")
    assert [r["id"] for r in records] == [str(q) for q in gold["questionId"]]
    assert [r["answers"] for r in records] == gold["answers"]
    assert [r["tags"] for r in records] == gold["question_types"]
    assert metrics["count"] == metrics["scored"] == len(records) == 12
    assert metrics["skipped"] == 0 and metrics["split"] == "validation" and metrics["task"] == "docvqa"

    for record in records:  # per-item scores are the metrics of the written prediction
        expected = {m: ITEM_METRICS[m](record["prediction"], record["answers"]) for m in METRICS}
        assert record["scores"] == pytest.approx(expected)
        assert record["score"] == record["scores"]["anls"]
    for metric in METRICS:  # corpus metrics are the mean of the per-item scores
        assert metrics[metric] == pytest.approx(statistics.fmean(r["scores"][metric] for r in records))
    # The fitted model gets some answers right, some partly and some wrong: the checks above are not 0 == 0.
    scores = [r["score"] for r in records]
    assert 1.0 in scores and any(0 < s < 1 for s in scores) and 0 < metrics["anls"] < 1

    for tag, row in metrics["per_type"].items():
        tagged = [r for r in records if tag in r["tags"]]
        assert row["count"] == len(tagged) > 0
        assert row["anls"] == pytest.approx(statistics.fmean(r["score"] for r in tagged))
    assert set(metrics["per_type"]) == {tag for r in records for tag in r["tags"]}

    # Official submission: one entry per question id, int ids, the predictions as answers.
    assert submission == [{"questionId": int(r["id"]), "answer": r["prediction"]} for r in records]
    assert len({entry["questionId"] for entry in submission}) == len(submission)


def test_report_lists_examples_worst_first(validation_run: Path) -> None:
    records, _, _ = read_run(validation_run)
    html = (validation_run / "report.html").read_text(encoding="utf-8")
    shown = re.findall(r"id (\d+)", html)
    by_id = {r["id"]: r for r in records}
    assert sorted(shown) == sorted(by_id)
    shown_scores = [by_id[i]["score"] for i in shown]
    assert shown_scores == sorted(shown_scores)
    assert (validation_run / "report_files" / "per_type.png").stat().st_size > 0


def test_comparison_lists_changed_answers(validation_run: Path) -> None:
    after, after_metrics, _ = read_run(validation_run)
    before, before_metrics, _ = read_run(validation_run / "baseline")
    assert before_metrics["model"] != after_metrics["model"]
    changed = [a["id"] for b, a in zip(before, after, strict=True) if b["prediction"] != a["prediction"]]
    assert changed  # the random baseline and the fitted model answer differently
    html = (validation_run / "comparison.html").read_text(encoding="utf-8")
    assert f"{len(changed)} of {len(after)} answers changed" in html
    assert sorted(re.findall(r"id (\d+)", html)) == sorted(changed)
    improved = sum(a["score"] > b["score"] for b, a in zip(before, after, strict=True))
    assert f"{improved} improved" in html


def test_hidden_test_split_gets_predictions_and_submission(
    tmp_path: Path, fitted_model_dir: Path, docvqa_dir: Path
) -> None:
    evaluate(
        "--model_name_or_path", str(fitted_model_dir), "--dataset_name", str(docvqa_dir),
        "--split", "test", "--output_dir", str(tmp_path),
    )  # fmt: skip
    records, metrics, submission = read_run(tmp_path)
    assert metrics["count"] == metrics["skipped"] == len(records) == 12
    assert metrics["scored"] == 0 and "anls" not in metrics and "no gold answers" in metrics["note"]
    assert all(r["answers"] is None and r["score"] is None for r in records)
    assert [e["questionId"] for e in submission] == [int(r["id"]) for r in records]
    assert "<em>hidden</em>" in (tmp_path / "report.html").read_text(encoding="utf-8")


def test_several_processes_score_every_example_once(
    tmp_path: Path,
    validation_run: Path,
    fitted_model_dir: Path,
    docvqa_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")  # torchrun's processes share the CPU (gloo)
    result = run_recipe_subprocess(
        "evaluate.py",
        "--model_name_or_path", str(fitted_model_dir), "--dataset_name", str(docvqa_dir),
        "--split", "validation", "--max_eval_samples", "11", "--output_dir", str(tmp_path), *FAST,
        num_processes=2,
        launcher_args=("--multi_gpu", "--main_process_port", "0"),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "11 examples on 2 process(es)" in result.stdout
    records, metrics, submission = read_run(tmp_path)
    single, _, _ = read_run(validation_run)
    # 11 rows over 2 processes (6 + 5): no row dropped or repeated, dataset order kept, same answers.
    assert records == single[:11]
    assert len(submission) == metrics["count"] == 11
    for metric in METRICS:
        assert metrics[metric] == pytest.approx(statistics.fmean(r["scores"][metric] for r in single[:11]))


def test_split_alias_and_argument_errors() -> None:
    _, data_args, eval_args = parse_evaluation_args(["--split", "test", "--output_dir", "out"])
    assert data_args.eval_split == "test" and eval_args.output_dir == "out"
    _, data_args, _ = parse_evaluation_args(["--output_dir", "out"])
    assert data_args.eval_split == "validation"
    with pytest.raises(SystemExit):
        parse_evaluation_args(["--output_dir", "out", "--gallery_size", "0"])


def recipe_eval(model_dir: Path, out: Path, *data_args: str) -> dict[str, Any]:
    """The training recipe's own evaluation of a checkpoint (`--do_train false`), with evaluate.py's settings."""
    result = run_recipe_subprocess(
        "docvqa.py", "--model_name_or_path", str(model_dir), *data_args, "--output_dir", str(out),
        "--do_train", "false", "--do_eval", "true", "--report_to", "none", *FAST,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads((out / "eval_results.json").read_text(encoding="utf-8"))


def test_evaluate_and_the_recipe_agree_on_the_same_checkpoint(
    tmp_path: Path, validation_run: Path, fitted_model_dir: Path, docvqa_dir: Path
) -> None:
    recipe = recipe_eval(fitted_model_dir, tmp_path / "recipe", "--dataset_name", str(docvqa_dir))
    _, metrics, _ = read_run(validation_run)
    assert 0 < metrics["anls"] < 1  # a score worth comparing
    for key in (*METRICS, "count", "scored"):
        assert metrics[key] == pytest.approx(recipe[f"eval_{key}"], abs=1e-9), key


def test_evaluate_scores_detection_with_map_as_the_recipe_does(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = write_synthetic_detection(tmp_path / "shapes", num_train=2, num_validation=6)
    model_dir = fit_tiny_model(tiny_model_dir, data, tmp_path / "detector", task="detection", steps=80)
    task = ("--task", "detection", "--dataset_name", str(data), "--max_target_length", "64")
    evaluate("--model_name_or_path", str(model_dir), *task, "--output_dir", str(tmp_path / "eval"))
    records, metrics, _ = read_run(tmp_path / "eval")
    recipe = recipe_eval(model_dir, tmp_path / "recipe", *task)
    assert metrics["map"] > 0 and metrics["count"] == len(records) == 6  # the fitted detector finds boxes
    for key in ("map", "map_50", "map_75", "mar_100", "count"):
        assert metrics[key] == pytest.approx(recipe[f"eval_{key}"], abs=1e-9), key
    assert all("<loc_" in r["prediction"] for r in records)  # boxes are kept in the written predictions


def test_evaluate_runs_the_bad_sample_policy_and_refuses_training_options(
    tmp_path: Path, fitted_model_dir: Path
) -> None:
    data = write_synthetic_vqa_jsonl(tmp_path / "vqa", num_train=1, num_validation=5)
    rows = (data / "validation.jsonl").read_text(encoding="utf-8").splitlines()
    broken = json.loads(rows[2]) | {"image": "images/missing.png"}
    (data / "validation.jsonl").write_text("\n".join([*rows[:2], json.dumps(broken), *rows[3:]]) + "\n")
    args = ("--model_name_or_path", str(fitted_model_dir), "--task", "vqa", "--dataset_name", str(data))

    refused = subprocess.run(
        [sys.executable, str(REPO_ROOT / "recipes" / "evaluate.py"), *args, "--output_dir", str(tmp_path / "a"), *FAST],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    last_line = refused.stderr.strip().splitlines()[-1]  # after the datasets progress bars
    assert refused.returncode == 1 and last_line.startswith("error: eval split of ")
    assert "image_missing" in last_line and "Traceback" not in refused.stderr

    evaluate(*args, "--on_bad_sample", "skip", "--output_dir", str(tmp_path / "b"))
    records, metrics, _ = read_run(tmp_path / "b")
    assert metrics["count"] == 4 and metrics["bad_samples_image_missing"] == 1
    # The skipped item is still in predictions.jsonl, unanswered, and scores 0 in the metrics (issue 15).
    assert (
        len(records) == 5 and records[2]["bad_sample"] == "image_missing" and records[2]["prediction"] == ""
    )
    assert metrics["unreadable"] == 1

    training_options = ("--max_train_samples", "3", "--train_split", "validation")
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "recipes" / "evaluate.py"), *args, *training_options, "--output_dir", "x"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr == (
        "error: train_split, max_train_samples: training option(s) that an evaluation does not use; pick the "
        "evaluated split with --split (per mixture entry: eval_split) and cap it with --max_eval_samples\n"
    )


def test_evaluate_scores_a_mixture_per_source(tmp_path: Path, tiny_model_dir: Path) -> None:
    cauldron = write_synthetic_cauldron(
        tmp_path / "the_cauldron", subsets=("ai2d", "chartqa"), rows_per_subset=4
    )
    mixture = json.dumps(
        [{"dataset": str(cauldron), "task": "cauldron", "config": subset, "eval_split": "train"}
         for subset in ("ai2d", "chartqa")]
    )  # fmt: skip
    evaluate("--model_name_or_path", str(tiny_model_dir), "--dataset_mixture", mixture,
             "--output_dir", str(tmp_path / "eval"))  # fmt: skip
    records, metrics, _ = read_run(tmp_path / "eval")
    # Rows without an image or with two are skipped (the default policies); every other turn is an item.
    assert metrics["count"] == len(records) >= 4
    assert {record["id"].split("-")[0] for record in records} == {"ai2d", "chartqa"}
    # The mixture's overall metrics and each source's own (ai2d: exact match; chartqa: relaxed accuracy).
    assert {"exact_match", "levenshtein", "ai2d_exact_match", "chartqa_relaxed_accuracy"} <= set(metrics)
