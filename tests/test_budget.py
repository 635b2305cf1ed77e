"""The budget printed before training: FLOPs table against a fresh count, and every recipe YAML's budget offline."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from conftest import REPO_ROOT, run_recipe_subprocess

from florence_recipes.configs.parser import parse_recipe_args
from florence_recipes.data.sources import data_sources
from florence_recipes.training.budget import (
    KNOWN_SPLITS,
    MODEL_FLOPS,
    SampleFlops,
    compute_budget,
    model_flops,
    regenerate_table,
)

RECIPE_YAMLS = sorted((REPO_ROOT / "recipes").rglob("*.yaml"))
DOCVQA_TRAIN = KNOWN_SPLITS[("HuggingFaceM4/DocumentVQA", None, "train")]
# Recipes tied to a published number: their budget must be complete offline.
REPRODUCTIONS = {
    # yaml: (optimizer steps, samples seen) on the 8 GPUs of their plan, global batch 64
    "docvqa/blog_reproduction.yaml": (7 * math.ceil(39_463 / 64), 7 * 39_463),
    "docvqa/large_docvqa_only.yaml": (10 * math.ceil(39_463 / 64), 10 * 39_463),
    "docmatix/large_stage1.yaml": (5_938, 5_938 * 64),
    "docvqa/large_from_docmatix.yaml": (math.ceil(39_463 / 64), 39_463),
    "docmatix/goal_base_stage1.yaml": (23_438, 23_438 * 64),
    "docvqa/goal_base_from_docmatix.yaml": (3 * math.ceil(39_463 / 64), 3 * 39_463),
}


def test_stored_tiny_flops_match_a_fresh_count() -> None:
    """`python -m florence_recipes.budget --regenerate` wrote MODEL_FLOPS; the tiny entry is recounted here (base
    and large take minutes: `-m slow`)."""
    assert regenerate_table(("tiny",))["tiny"] == MODEL_FLOPS["tiny"]


@pytest.mark.slow
def test_stored_base_flops_match_a_fresh_count() -> None:
    assert regenerate_table(("base",))["base"] == MODEL_FLOPS["base"]


def test_flops_per_sample_by_mode_and_shared_images() -> None:
    flops = SampleFlops(vision_forward=10, full_train=100, frozen_vision_train=50)
    # text = 50 - 10 = 40; vision full = 10 forward + 50 backward; frozen = 10 forward only
    assert flops.per_sample("full") == 100 and flops.per_sample("frozen_vision") == 50
    assert flops.per_sample("full", questions_per_image=4) == 40 + 60 / 4
    assert flops.per_sample("lora", questions_per_image=2) == 40 + 10 / 2


@pytest.mark.parametrize("yaml", RECIPE_YAMLS, ids=lambda path: str(path.relative_to(REPO_ROOT / "recipes")))
def test_every_recipe_yaml_gives_its_budget_offline(
    yaml: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `--budget_only true` prints, computed from the YAML and KNOWN_SPLITS alone (no Hub, no download;
    run from an empty folder, so the smoke recipes' relative local paths do not exist)."""
    monkeypatch.chdir(tmp_path)
    model_args, data_args, training_args = parse_recipe_args(["--config", str(yaml), "--budget_only", "true"])
    budget = compute_budget(model_args, data_args, training_args, data_sources(data_args, training_args))
    assert "unknown" not in budget.lines()[0] or budget.flops_per_sample is None
    name = str(yaml.relative_to(REPO_ROOT / "recipes"))
    if name in REPRODUCTIONS:
        assert (budget.world_size, budget.global_batch) == (8, 64)
        assert (budget.optimizer_steps, round(budget.samples_seen)) == REPRODUCTIONS[name]
        assert budget.h100_hours is not None and budget.h100_hours > 0
    if name == "docmatix/large_stage1.yaml":  # 20% of the images x 20% of their turns = 4% of 9.5M Q/A pairs
        assert budget.samples_per_epoch == pytest.approx(0.04 * 9_500_000)
        assert budget.flops_per_sample == MODEL_FLOPS["large"]["full_train"]


def test_budget_only_prints_and_stops_before_loading_anything(tmp_path: Path) -> None:
    """Through the launcher, as a user runs it: stage 2 of the 71.4 recipe names a stage-1 folder that does not
    exist and a Hub dataset (offline here); it prints the budget and exits without touching either."""
    output_dir = tmp_path / "out"
    result = run_recipe_subprocess(
        "docvqa.py",
        "--config", str(REPO_ROOT / "recipes/docvqa/large_from_docmatix.yaml"),
        "--budget_only", "true",
        "--output_dir", str(output_dir),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    steps = math.ceil(DOCVQA_TRAIN.rows / 64)
    assert "***** Budget *****" in result.stdout and f"optimizer steps: {steps:,}" in result.stdout
    assert "estimated H100 GPU-hours: " in result.stdout and "unknown" not in result.stdout
    assert not output_dir.exists()


def test_a_local_checkpoint_is_counted_from_its_own_config(tiny_model_dir: Path) -> None:
    """The smoke recipes' tiny model: counted fresh at its processor's image size, equal to the stored count."""
    flops, source = model_flops(str(tiny_model_dir))
    assert flops == SampleFlops(
        **{k: MODEL_FLOPS["tiny"][k] for k in ("vision_forward", "full_train", "frozen_vision_train")}
    )
    assert source.endswith("at 128 px")
