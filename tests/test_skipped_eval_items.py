"""Skipped eval items still count (issue 15): with `on_bad_sample: skip`, an eval item dropped as bad scores 0
in the headline metric, the mean over the readable items is reported beside it as `<metric>_over_readable`,
and evaluate.py's submission still answers every question (empty for a skipped one)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, sources_of, standard_features
from datasets import Dataset, Image, load_dataset
from PIL import Image as PILImage

from florence_recipes.data.boxes import format_detection_target
from florence_recipes.data.validation import check_samples
from florence_recipes.evaluation.report import write_report
from florence_recipes.evaluation.scoring import build_scorer

FAST = ("--generation_max_length", "32", "--dataloader_num_workers", "0", "--per_device_eval_batch_size", "6")


def test_a_skipped_item_scores_zero_in_the_headline(processor) -> None:
    picture = PILImage.new("RGB", (32, 32), "white")
    rows = {
        "id": ["a", "b", "bad-question", "no-gold", "c"],
        "image": [picture] * 5,
        "image_id": ["i"] * 5,
        "prompt": ["<VQA>q1", "<VQA>q2", "  ", "<VQA>q4", "<VQA>q5"],
        "target": ["42", "cat", "x", "", "owl"],
        "answers": [["42"], ["cat"], ["x"], [], ["owl"]],
        "tags": [[]] * 5,
        "source": ["vqa"] * 5,
    }
    dataset = Dataset.from_dict(rows, features=standard_features())
    kept, bad = check_samples(dataset, "skip", "eval split of test")
    assert list(kept["id"]) == ["a", "b", "c"]
    assert [item.id for item in bad.dropped] == ["bad-question", "no-gold"]
    scorer = build_scorer(processor, kept, sources_of("vqa"), dropped=bad.dropped)
    metrics = scorer.score(["42", "dog", "owl"]).metrics
    # "no-gold" has nothing to score against (like a hidden test item): not counted; "bad-question" scores 0.
    assert (metrics["scored"], metrics["unreadable"], metrics["count"]) == (3, 1, 3)
    assert metrics["anls_over_readable"] == pytest.approx(2 / 3)
    assert metrics["anls"] == pytest.approx(2 / 4)
    assert metrics["exact_match"] == pytest.approx(2 / 4)


def test_without_skipped_items_nothing_changes(processor) -> None:
    rows = {
        "id": ["a", "b"], "image": [PILImage.new("RGB", (32, 32))] * 2, "image_id": ["i"] * 2,
        "prompt": ["<VQA>q1", "<VQA>q2"], "target": ["42", "cat"], "answers": [["42"], ["cat"]],
        "tags": [[]] * 2, "source": ["vqa"] * 2,
    }  # fmt: skip
    kept, bad = check_samples(Dataset.from_dict(rows, features=standard_features()), "skip", "eval")
    metrics = build_scorer(processor, kept, sources_of("vqa"), dropped=bad.dropped).score(["42", "x"]).metrics
    assert metrics["anls"] == 0.5 and "unreadable" not in metrics and "anls_over_readable" not in metrics


@pytest.fixture(scope="module")
def docvqa_with_a_corrupt_page(tmp_path_factory: pytest.TempPathFactory, docvqa_dir: Path) -> Path:
    """The synthetic DocVQA validation split with the first question's page replaced by broken bytes."""
    folder = tmp_path_factory.mktemp("corrupt-docvqa")
    rows = load_dataset(str(docvqa_dir), split="validation").cast_column("image", Image(decode=False))
    rows = rows.map(
        lambda row, index: {"image": {"bytes": b"not a png", "path": None}} if index == 0 else {},
        with_indices=True,
    )
    rows.to_parquet(str(folder / "validation.parquet"))
    return folder


def test_evaluate_counts_skipped_items_and_answers_every_question(
    tmp_path: Path, fitted_model_dir: Path, docvqa_with_a_corrupt_page: Path
) -> None:
    out = tmp_path / "eval"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "recipes" / "evaluate.py"), "--model_name_or_path", str(fitted_model_dir),
         "--dataset_name", str(docvqa_with_a_corrupt_page), "--task", "docvqa", "--split", "validation",
         "--on_bad_sample", "skip", "--output_dir", str(out), *FAST],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    gold = load_dataset(str(docvqa_with_a_corrupt_page), split="validation")
    ids = [int(q) for q in gold["questionId"]]
    skipped_id = ids[0]

    submission = json.loads((out / "submission.json").read_text())
    assert sorted(entry["questionId"] for entry in submission) == sorted(ids)  # every question answered
    assert {e["questionId"]: e["answer"] for e in submission}[skipped_id] == ""

    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 12
    (skipped,) = [r for r in records if r["id"] == str(skipped_id)]
    assert (
        skipped["prediction"] == "" and skipped["score"] == 0 and skipped["bad_sample"] == "image_unreadable"
    )

    metrics = json.loads((out / "metrics.json").read_text())
    readable = [r["score"] for r in records if r["id"] != str(skipped_id)]
    assert any(readable)  # the fitted model gets some right: the comparison below is not 0 == 0
    assert (metrics["scored"], metrics["unreadable"], metrics["bad_samples"]) == (11, 1, 1)
    assert metrics["anls"] == pytest.approx(sum(readable) / 12)
    assert metrics["anls_over_readable"] == pytest.approx(statistics.fmean(readable))
    log = result.stdout + result.stderr
    assert "1 eval item(s) skipped as bad samples" in log
    report = (out / "report.html").read_text()
    assert "anls_over_readable" in report and "unreadable" in report


def test_report_shows_the_counts(tmp_path: Path) -> None:
    records = [
        {"id": "1", "image_id": "x", "question": "q", "prediction": "a", "answers": ["a"], "tags": [],
         "scores": {"anls": 1.0}, "score": 1.0},
    ]  # fmt: skip
    metrics = {
        "count": 1,
        "scored": 1,
        "skipped": 0,
        "unreadable": 2,
        "anls": 1 / 3,
        "anls_over_readable": 1.0,
    }
    page = write_report(
        tmp_path, records, metrics, images=lambda i: PILImage.new("RGB", (8, 8)), metric_names=("anls",),
        title="t", subtitle="s",
    )  # fmt: skip
    html = page.read_text()
    assert "unreadable" in html and "anls_over_readable" in html and "0.3333" in html and "1.0000" in html


def test_a_skipped_detection_item_counts_as_missed_boxes(processor) -> None:
    target = format_detection_target([[4, 4, 20, 20]], ["circle"], (32, 32), "test")
    rows = {
        "id": ["a", "gone"], "image": [PILImage.new("RGB", (32, 32)), None], "image_id": ["i", "j"],
        "prompt": ["<OD>", "<OD>"], "target": [target, target], "answers": [[target], [target]],
        "tags": [[]] * 2, "source": ["detection"] * 2,
    }  # fmt: skip
    kept, bad = check_samples(Dataset.from_dict(rows, features=standard_features()), "skip", "eval")
    assert [item.reason for item in bad.dropped] == ["image_missing"]
    metrics = (
        build_scorer(processor, kept, sources_of("detection"), dropped=bad.dropped).score([target]).metrics
    )
    assert metrics["map_over_readable"] == pytest.approx(1.0) and metrics["unreadable"] == 1
    assert metrics["mar_100"] == pytest.approx(0.5)  # one of the two gold boxes found
