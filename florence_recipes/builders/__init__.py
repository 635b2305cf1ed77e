"""Offline builders: a tiny random native Florence-2 and synthetic datasets in the Hub's own layouts.

Tests use them, and so can users: the smoke recipes check a machine (install, launcher, DataLoader
workers, distributed setup, saving) end to end before any GPU hour is paid for.
"""

from __future__ import annotations

from pathlib import Path

from florence_recipes.builders.datasets import write_synthetic_docvqa
from florence_recipes.builders.model import build_random_florence2
from florence_recipes.errors import RecipeError

DATASET_BUILDERS = {"docvqa": write_synthetic_docvqa}


def build_offline_fixtures(model_dir: str, dataset_dir: str, task: str) -> None:
    """Build the tiny model at `model_dir` and the synthetic dataset of `task` at `dataset_dir` if missing."""
    if task not in DATASET_BUILDERS:
        raise RecipeError(
            f"build_offline_fixtures: no synthetic dataset for task {task!r}; available: {', '.join(DATASET_BUILDERS)}"
        )
    build_random_florence2(Path(model_dir), size="tiny")
    DATASET_BUILDERS[task](Path(dataset_dir))


__all__ = ["build_offline_fixtures", "build_random_florence2", "write_synthetic_docvqa"]
