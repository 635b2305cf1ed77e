"""Shared fixtures: every test runs offline, on the package's own tiny model and synthetic datasets."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

# Before transformers / datasets are imported anywhere: no Hub, and a private HF cache so that neither a
# user's token nor a stale dataset cache can change what a test sees.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="florence-recipes-hf-home-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Two pytest-xdist workers share 2 cores: one OpenMP thread each (inherited by recipe subprocesses) instead of
# four spinning threads fighting over them.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

if TYPE_CHECKING:
    from peft import PeftModel

    from florence_recipes.configs.model import ModelArguments

REPO_ROOT = Path(__file__).resolve().parents[1]
SMOKE_YAML = REPO_ROOT / "recipes" / "docvqa" / "smoke_documents.yaml"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from florence_recipes.builders.model import build_random_florence2

    return build_random_florence2(tmp_path_factory.mktemp("models") / "tiny-florence2", size="tiny")


@pytest.fixture(scope="session")
def docvqa_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from florence_recipes.builders.datasets import write_synthetic_docvqa

    return write_synthetic_docvqa(tmp_path_factory.mktemp("data") / "synthetic-docvqa")


@pytest.fixture
def dropout_model_dir(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """The tiny model with dropout and stochastic depth, as Florence-2-base has: resuming must then also
    restore the RNG state, or the dropout masks after a resume differ."""
    folder = shutil.copytree(tiny_model_dir, tmp_path / "tiny-dropout")
    config = json.loads((folder / "config.json").read_text())
    config["text_config"] |= {"dropout": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.1}
    config["vision_config"]["drop_path_rate"] = 0.1
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="session")
def fitted_model_dir(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, docvqa_dir: Path
) -> Path:
    """The tiny model after memorising most answers of `docvqa_dir`'s validation split (tests/eval_helpers.py)."""
    from eval_helpers import fit_tiny_model

    return fit_tiny_model(tiny_model_dir, docvqa_dir, tmp_path_factory.mktemp("models") / "tiny-fitted")


def recipe_command(
    script: str, *args: str, num_processes: int = 1, launcher_args: Sequence[str] = ()
) -> list[str]:
    """`accelerate launch [launcher_args] recipes/<script> args...`, as a user would type it (run it from the
    repo root); e.g. `launcher_args=("--config_file", "accelerate_configs/multi_gpu.yaml")`.

    `--quiet` stops the single-process launcher from adding its own CalledProcessError traceback to a
    recipe's one-line error.
    """
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--quiet", "--num_processes", str(num_processes),
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *launcher_args,
        str(REPO_ROOT / "recipes" / script), *args,
    ]  # fmt: skip


@pytest.fixture(scope="session")
def processor(tiny_model_dir: Path):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def train_rows(docvqa_dir: Path):
    """The synthetic DocVQA train split as standard rows."""
    from florence_recipes.data.loading import load_task_split
    from florence_recipes.data.tasks import get_task

    return load_task_split(get_task("docvqa"), str(docvqa_dir), "train")


def run_recipe_subprocess(
    script: str,
    *args: str,
    num_processes: int = 1,
    launcher_args: Sequence[str] = (),
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """Run `recipe_command(...)` from the repo root and wait for it."""
    return subprocess.run(
        recipe_command(script, *args, num_processes=num_processes, launcher_args=launcher_args),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def standard_features():
    """The standard rows' features with decoded images, to build small datasets in tests."""
    from datasets import Image

    from florence_recipes.data.loading import ROW_FEATURES

    features = ROW_FEATURES.copy()
    features["image"] = Image()
    return features


def sources_of(task: str = "docvqa", dataset: str = "synthetic"):
    """The `sources` of a one-dataset run of `task`, as `data_sources` gives them to `FlorenceTrainer`."""
    from florence_recipes.data.sources import DataSource
    from florence_recipes.data.tasks import get_task

    return [DataSource(get_task(task), dataset, None, "train", "validation", name=task)]


def save_lora_adapter(peft_model: PeftModel, model_args: ModelArguments, folder: Path) -> Path:
    """Save a `training_mode: lora` folder (adapter + processor, no config.json) whose adapter changes the outputs:
    LoRA starts as a no-op (B = 0), so B is drawn at random (seeded)."""
    import torch

    from florence_recipes.models.loading import load_processor

    torch.manual_seed(0)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    peft_model.save_pretrained(folder)
    load_processor(model_args).save_pretrained(folder)
    return folder
