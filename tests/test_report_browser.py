"""The HTML reports in a real browser (Debian's headless Chromium through Playwright): every image renders,
the gallery is worst first, and a screenshot is taken.

    FLORENCE_RECIPES_SCREENSHOTS=docs pytest tests/test_report_browser.py

also refreshes docs/report.png and docs/comparison.png.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import sources_of
from eval_helpers import chromium_page, save_screenshot

from florence_recipes.configs.evaluation import EvaluationArguments
from florence_recipes.configs.model import ModelArguments
from florence_recipes.data.loading import load_task_split
from florence_recipes.data.tasks import get_task
from florence_recipes.evaluation.records import write_evaluation
from florence_recipes.evaluation.report import write_comparison_report, write_report
from florence_recipes.training.evaluate import evaluate_model

# Every <img> of the page with whether it decoded: a broken or missing file has naturalWidth 0.
IMAGES_JS = "Array.from(document.images).map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0])"


@pytest.fixture(scope="module")
def report_dir(
    tmp_path_factory: pytest.TempPathFactory, fitted_model_dir: Path, tiny_model_dir: Path, docvqa_dir: Path
) -> Path:
    """What `recipes/evaluate.py --baseline_model_name_or_path` writes, built in-process."""
    out = tmp_path_factory.mktemp("report")
    task = get_task("docvqa")
    dataset = load_task_split(task, str(docvqa_dir), "validation")
    eval_args = EvaluationArguments(output_dir=str(out), generation_max_length=32, dataloader_num_workers=0)
    training_args = eval_args.trainer_arguments(max_target_length=32)
    runs = {}
    for name, model_dir in (("model", fitted_model_dir), ("baseline", tiny_model_dir)):
        model_args = ModelArguments(model_name_or_path=str(model_dir))
        result = evaluate_model(model_args, dataset, sources_of("docvqa"), training_args, 32)
        runs[name] = result.records, result.metrics
    records, metrics = runs["model"]
    write_evaluation(out, records, metrics)

    def images(i: int):
        return dataset[i]["image"]

    write_report(
        out, records, metrics, images, task.metrics, title="tiny fitted Florence-2 on synthetic DocVQA"
    )
    before, before_metrics = runs["baseline"]
    write_comparison_report(
        out,
        before,
        records,
        before_metrics,
        metrics,
        images,
        task.metrics,
        title="random vs fitted tiny model",
    )
    return out


def test_report_renders_every_image_worst_first(report_dir: Path, tmp_path: Path) -> None:
    with chromium_page(height=1300) as page:
        page.goto((report_dir / "report.html").as_uri())
        images = page.evaluate(IMAGES_JS)
        assert len(images) == 1 + 12  # the per-type chart and one thumbnail per question
        assert [src for src, ok in images if not ok] == []
        assert page.locator("#per-type-chart").evaluate("i => i.naturalWidth") == 800
        badges = page.locator(".gallery .score").all_inner_texts()
        assert len(badges) == 12 and badges == sorted(badges, key=float)
        shot = save_screenshot(page, tmp_path, "report.png")
        assert shot.stat().st_size > 10_000

        # The check catches a broken image: remove one thumbnail and look again.
        broken = sorted((report_dir / "report_files").glob("*.jpg"))[0]
        broken.unlink()
        page.reload()
        missing = [src for src, ok in page.evaluate(IMAGES_JS) if not ok]
        assert missing and set(missing) == {f"report_files/{broken.name}"}


def test_comparison_renders_side_by_side(report_dir: Path, tmp_path: Path) -> None:
    with chromium_page(height=1100) as page:
        page.goto((report_dir / "comparison.html").as_uri())
        assert [src for src, ok in page.evaluate(IMAGES_JS) if not ok] == []
        rows = page.locator(".gallery tr").count() - 1  # minus the header
        summary = page.locator("#changed-summary").inner_text()
        assert summary.startswith(f"{rows} of 12 answers changed")
        save_screenshot(page, tmp_path, "comparison.png")
