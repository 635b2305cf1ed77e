"""The README's first command, exactly as a new user types it on a fresh clone, shows a model learning: held-out
ANLS far above the image-blind baseline, the curves and the evaluation report on disk, and the next three
commands in its last lines."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from conftest import REPO_ROOT, recipe_command

from florence_recipes.builders.visual_qa import (
    dataset_image_blind_baseline,
    dataset_most_frequent_answer_baseline,
)

FIRST_YAML = REPO_ROOT / "recipes" / "docvqa" / "smoke.yaml"


def test_first_command_learns_from_pixels_and_names_the_next_commands(tmp_path: Path) -> None:
    # Run from an empty folder: the YAML's relative paths (.cache/offline/..., outputs/...) start empty there, as
    # on a fresh clone, so the fixtures are built by the command itself.
    result = subprocess.run(
        recipe_command("docvqa.py", "--config", str(FIRST_YAML)),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    output = tmp_path / "outputs" / "docvqa-smoke"
    data = tmp_path / ".cache" / "offline" / "visual-qa-background"
    anls = json.loads((output / "all_results.json").read_text())["eval_anls"]
    prior = dataset_most_frequent_answer_baseline(data)
    ceiling = dataset_image_blind_baseline(data)  # no image-blind model scores more
    assert anls >= 0.5 and anls > ceiling + 0.3, (
        f"held-out ANLS {anls:.3f}, image-blind {prior:.3f} / {ceiling:.3f}"
    )

    assert (output / "training_curves.png").stat().st_size > 0
    report = (output / "eval" / "report.html").read_text()
    predictions = (output / "eval" / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 150 and "What colour is the background?" in report

    lines = [line.split(" - ", 3)[-1] for line in log.splitlines() if " - INFO - " in line]
    result_line, files_line, *next_lines = lines[-5:]
    assert result_line.startswith(
        f"held-out eval_anls {anls:.4f} on synthetic visual QA; image-blind baseline"
    )
    assert f"{prior:.4f}" in result_line and f"{ceiling:.4f}" in result_line
    assert "training_curves.png" in files_line and "eval/report.html" in files_line
    assert [
        "recipes/custom.py" in next_lines[0],
        "accelerate_configs/single_gpu.yaml" in next_lines[1],
        "recipes/evaluate.py" in next_lines[2],
    ] == [True, True, True], next_lines
