"""The Cauldron and custom-data recipes end to end (`accelerate launch`, tiny model, synthetic data), from
their smoke YAMLs with the data paths moved under tmp_path."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO_ROOT, run_recipe_subprocess
from PIL import Image

from florence_recipes.configs.parser import parse_recipe_args
from florence_recipes.data.sources import data_sources

MIXTURE_SMOKE = REPO_ROOT / "recipes" / "cauldron" / "cauldron_mixture_smoke.yaml"
CUSTOM = REPO_ROOT / "recipes" / "custom"


def smoke_config(source: Path, tmp_path: Path, model_dir: Path) -> tuple[Path, Path]:
    """The YAML with model, data and output moved under tmp_path (offline fixtures are still built there)."""
    config: dict[str, Any] = yaml.safe_load(source.read_text())
    config["model_name_or_path"] = str(model_dir)
    config["output_dir"] = str(tmp_path / "out")
    if "dataset_mixture" in config:
        for entry in config["dataset_mixture"]:
            entry["dataset"] = str(tmp_path / "data" / Path(entry["dataset"]).name)
    else:
        config["dataset_name"] = str(tmp_path / "data" / Path(config["dataset_name"]).name)
    path = tmp_path / source.name
    path.write_text(yaml.safe_dump(config))
    return path, tmp_path / "out"


def run(script: str, config: Path, *args: str) -> dict[str, Any]:
    result = run_recipe_subprocess(script, "--config", str(config), *args)
    assert result.returncode == 0, result.stderr[-3000:]
    output = Path(yaml.safe_load(config.read_text())["output_dir"])
    return json.loads((output / "all_results.json").read_text()) | {"log": result.stdout + result.stderr}


@pytest.mark.parametrize(
    "config",
    sorted((REPO_ROOT / "recipes" / "cauldron").glob("*.yaml")) + sorted(CUSTOM.glob("*.yaml")),
    ids=str,
)
def test_every_yaml_parses_and_names_valid_sources(config: Path, tmp_path: Path) -> None:
    # bf16 is off only because this CPU lacks it; everything else is the YAML as shipped.
    _, data_args, training_args = parse_recipe_args(
        ["--config", str(config), "--bf16", "false", "--output_dir", str(tmp_path)]
    )
    sources = data_sources(data_args, training_args)
    assert sources and all(source.task.metrics or source.task.box_task for source in sources)
    if training_args.metric_for_best_model:
        key = training_args.metric_for_best_model.removeprefix("eval_")
        assert key in sources[0].metrics or (sources[0].task.box_task and key == "map")


def test_cauldron_mixture_smoke(tmp_path: Path, tiny_model_dir: Path) -> None:
    config, _ = smoke_config(MIXTURE_SMOKE, tmp_path, tiny_model_dir)
    results = run("cauldron.py", config)
    # 6 eval rows per subset: one without image and one with two are skipped; 1+1+2+3 turns remain.
    assert results["eval_count"] == results["eval_samples"] == 3 * 7
    for key in ("docvqa_anls", "chartqa_relaxed_accuracy", "infographic_vqa_anls", "exact_match"):
        assert 0.0 <= results[f"eval_{key}"] <= 1.0
    assert "ai2d" not in json.dumps(results)
    # all_exhausted: every example of every source at least once, in proportion to the weights.
    assert results["train_samples"] >= 3 * 13
    assert "docvqa (train[6:]): 10 rows; 1 without image (skipped: no_image_policy=skip)" in results["log"]


# Slow: the default suite streams through tests/test_docmatix.py (streamed vs. map-style fractions).
@pytest.mark.slow
def test_cauldron_mixture_smoke_streamed(tmp_path: Path, tiny_model_dir: Path) -> None:
    config, _ = smoke_config(MIXTURE_SMOKE, tmp_path, tiny_model_dir)
    results = run("cauldron.py", config, "--streaming", "true", "--max_steps", "4")
    assert results["eval_count"] == 3 * 7 and "train_samples" not in results
    assert "eval_chartqa_relaxed_accuracy" in results and "streamed" in results["log"]


def run_card_snippet(model_dir: Path, tmp_path: Path) -> str:
    """Run the model card's "How to use" snippet as a user would copy it, on a white page; its stdout."""
    card = (model_dir / "README.md").read_text(encoding="utf-8")
    snippet = re.search(r"## How to use\n\n```python\n(.*?)```", card, re.DOTALL)
    assert snippet, "the model card has a python usage snippet"
    Image.new("RGB", (320, 240), "white").save(tmp_path / "document.png")
    result = subprocess.run(
        [sys.executable, "-c", snippet[1]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_custom_vqa_jsonl_smoke(tmp_path: Path, tiny_model_dir: Path) -> None:
    config, out = smoke_config(CUSTOM / "vqa_jsonl_smoke.yaml", tmp_path, tiny_model_dir)
    results = run("custom.py", config)
    assert results["eval_count"] == 8 and results["train_samples"] == 32
    assert {"eval_anls", "eval_vqa_accuracy", "eval_exact_match", "eval_levenshtein"} <= set(results)
    printed = run_card_snippet(out, tmp_path).strip()
    assert "<" not in printed  # plain text: special tokens skipped


def test_custom_detection_smoke(tmp_path: Path, tiny_model_dir: Path) -> None:
    config, out = smoke_config(CUSTOM / "detection_smoke.yaml", tmp_path, tiny_model_dir)
    results = run("custom.py", config)
    assert results["eval_count"] == 8 and results["train_samples"] == 32
    assert all(0.0 <= results[f"eval_{key}"] <= 1.0 for key in ("map", "map_50", "map_75", "mar_100"))
    assert "<OD>" in (out / "README.md").read_text()  # the model card's usage example
    # Box tasks: the snippet keeps the <loc_i> tokens and parses them into pixel boxes.
    printed = run_card_snippet(out, tmp_path)
    assert printed.startswith("{'<OD>': {'bboxes': [") and "'labels': [" in printed
