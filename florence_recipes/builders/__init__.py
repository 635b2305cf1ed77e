"""Layer 5, builders: offline fixtures — random native Florence-2 models and synthetic datasets in the Hub's
own layouts.

Owns the random models at release shapes (`model`) and in the original remote-code layout (`legacy_model`), the
Hub-layout writer (`layout`), synthetic documents and figures (`documents`, `figures`), the DocVQA, Cauldron,
Docmatix and own-data sets (`datasets`, `docmatix`), the held-out visual-QA set with its image-blind baselines
(`visual_qa`) and small sets in other tools' layouts (`formats`: maestro JSONL, COCO, LLaVA). May import `evaluation`, `models`, `data`, `configs` and `errors`; the trainer and the tooling
above it use the builders, never the other way round.

Tests use them, and so can users: the smoke recipes check a machine (install, launcher, DataLoader
workers, distributed setup, saving) end to end before any GPU hour is paid for.
"""

from __future__ import annotations

import json
from pathlib import Path

from florence_recipes.builders.datasets import (
    write_synthetic_cauldron,
    write_synthetic_detection,
    write_synthetic_docvqa,
    write_synthetic_vqa_jsonl,
)
from florence_recipes.builders.docmatix import write_synthetic_docmatix
from florence_recipes.builders.legacy_model import build_legacy_florence2, write_legacy_florence2
from florence_recipes.builders.model import ARCHITECTURES, BUILD_MARKER, build_random_florence2
from florence_recipes.builders.visual_qa import (
    dataset_image_blind_baseline,
    dataset_most_frequent_answer_baseline,
    image_blind_baseline,
    most_frequent_answer_baseline,
    visual_qa_options,
    write_synthetic_visual_qa,
)
from florence_recipes.errors import RecipeError

# Task name -> writer of a synthetic dataset that task reads (Hub layout, or JSONL + images for your own data).
DATASET_BUILDERS = {
    "docvqa": write_synthetic_docvqa,
    "cauldron": write_synthetic_cauldron,
    "docmatix": write_synthetic_docmatix,
    "vqa": write_synthetic_vqa_jsonl,
    "detection": write_synthetic_detection,
}


def _buildable(folder: Path, builder: str | None = None) -> bool:
    """Only a missing or empty folder, or one a builder wrote (it holds the build marker), is (re)built; with
    `builder`, only a folder that builder wrote, so that another fixture (e.g. a maestro-layout folder from
    `builders.formats` given to a smoke YAML of task vqa) is read rather than replaced.

    Anything else is the user's own model or data — e.g. a smoke YAML pointed at a trained checkpoint —
    and is used as it is, never overwritten.
    """
    if not folder.exists():
        return True
    if not folder.is_dir():
        return False  # a data file, e.g. a LLaVA .json
    if (folder / BUILD_MARKER).is_file():
        return builder is None or _marker_builder(folder) in (None, builder)
    return not any(folder.iterdir())


def _marker_builder(folder: Path) -> str | None:
    try:
        return json.loads((folder / BUILD_MARKER).read_text()).get("builder")
    except (OSError, ValueError, AttributeError):
        return None


def build_offline_fixtures(model_dir: str, dataset_dir: str, task: str) -> None:
    """Build the tiny model at `model_dir` and the synthetic dataset of `task` at `dataset_dir` if missing."""
    if task not in DATASET_BUILDERS:
        raise RecipeError(
            f"build_offline_fixtures: no synthetic dataset for task {task!r}; available: {', '.join(DATASET_BUILDERS)}"
        )
    if _buildable(Path(model_dir)):
        build_random_florence2(Path(model_dir), size=_model_size(Path(model_dir)))
    visual_qa = visual_qa_options(dataset_dir)
    if task == "docvqa" and visual_qa is not None:  # e.g. .cache/offline/visual-qa, visual-qa-blank
        if _buildable(Path(dataset_dir), write_synthetic_visual_qa.__name__):
            write_synthetic_visual_qa(Path(dataset_dir), **visual_qa)
    elif _buildable(Path(dataset_dir), DATASET_BUILDERS[task].__name__):
        DATASET_BUILDERS[task](Path(dataset_dir))


def _model_size(model_dir: Path) -> str:
    """`<size>-florence2...` folders get that architecture (e.g. tiny64-florence2), any other name the tiny one."""
    prefix = model_dir.name.split("-florence2")[0]
    return prefix if "-florence2" in model_dir.name and prefix in ARCHITECTURES else "tiny"


__all__ = [
    "build_legacy_florence2",
    "build_offline_fixtures",
    "build_random_florence2",
    "dataset_image_blind_baseline",
    "dataset_most_frequent_answer_baseline",
    "image_blind_baseline",
    "most_frequent_answer_baseline",
    "write_legacy_florence2",
    "write_synthetic_cauldron",
    "write_synthetic_detection",
    "write_synthetic_docmatix",
    "write_synthetic_docvqa",
    "write_synthetic_visual_qa",
    "write_synthetic_vqa_jsonl",
]
