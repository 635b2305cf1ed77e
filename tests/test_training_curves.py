"""training_curves.png at the end of training, and `report_to` TensorBoard and trackio working offline."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import yaml
from conftest import SMOKE_YAML, run_recipe_subprocess
from PIL import Image
from transformers import TrainerControl, TrainerState, TrainingArguments

from florence_recipes.training.curves import (
    CURVES_FILE,
    TrainingCurvesCallback,
    eval_metric_keys,
    plot_training_curves,
)

LOG_HISTORY = [
    {"loss": 5.0, "grad_norm": 3.0, "learning_rate": 1e-3, "epoch": 0.5, "step": 5},
    {"loss": 4.0, "grad_norm": 2.0, "learning_rate": 5e-4, "epoch": 1.0, "step": 10},
    {"eval_loss": 4.2, "eval_anls": 0.1, "eval_docvqa_anls": 0.1, "eval_runtime": 1.5, "eval_count": 12,
     "eval_samples_per_second": 8.0, "epoch": 1.0, "step": 10},
    {"train_runtime": 9.0, "train_loss": 4.5, "epoch": 1.0, "step": 10},
]  # fmt: skip


def test_plot_has_three_panels_of_the_logged_values(tmp_path: Path) -> None:
    assert eval_metric_keys(LOG_HISTORY) == ["eval_anls", "eval_docvqa_anls"]  # no loss/runtime/count
    path = plot_training_curves(LOG_HISTORY, tmp_path / "curves.png")
    with Image.open(path) as image:
        assert image.size == (1500, 400)
    # No evaluation logged yet (e.g. eval_strategy: no): still a figure, not an error.
    plot_training_curves(LOG_HISTORY[:2], tmp_path / "train_only.png")
    assert (tmp_path / "train_only.png").stat().st_size > 0


def test_callback_draws_for_training_runs_on_the_main_process_only(tmp_path: Path) -> None:
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none")
    callback, control = TrainingCurvesCallback(), TrainerControl()
    callback.on_train_end(args, TrainerState(log_history=LOG_HISTORY[2:3]), control)  # evaluation only
    callback.on_train_end(args, TrainerState(log_history=LOG_HISTORY, is_world_process_zero=False), control)
    assert not (tmp_path / CURVES_FILE).exists()
    callback.on_evaluate(args, TrainerState(log_history=LOG_HISTORY), control)
    assert (tmp_path / CURVES_FILE).is_file()


def test_recipe_writes_curves_and_logs_to_tensorboard_and_trackio(
    tmp_path: Path, tiny_model_dir: Path, docvqa_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("trackio", reason="trackio check needs: pip install trackio")
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))  # trackio's local SQLite store
    out = tmp_path / "out"
    # Several `report_to` integrations are a YAML list (the command line takes one value).
    config = yaml.safe_load(SMOKE_YAML.read_text()) | {
        "model_name_or_path": str(tiny_model_dir), "dataset_name": str(docvqa_dir), "output_dir": str(out),
        "max_train_samples": 8, "max_eval_samples": 4, "num_train_epochs": 2, "per_device_train_batch_size": 4,
        "logging_steps": 1, "dataloader_num_workers": 0, "generation_max_length": 8, "save_strategy": "no",
        "report_to": ["tensorboard", "trackio"], "project": "florence-smoke", "run_name": "smoke",
    }  # fmt: skip
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(config))
    result = run_recipe_subprocess("docvqa.py", "--config", str(tmp_path / "recipe.yaml"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    with Image.open(out / CURVES_FILE) as image:
        assert image.size == (1500, 400)

    (run_dir,) = (out / "runs").iterdir()
    events = event_accumulator.EventAccumulator(str(run_dir)).Reload()
    scalars = events.Tags()["scalars"]
    assert {"train/loss", "train/learning_rate", "eval/anls"} <= set(scalars)
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]  # 8 samples / 4 per step x 2 epochs

    # trackio without a Space logs to a local SQLite file per project (one JSON object of metrics per row).
    with sqlite3.connect(tmp_path / "trackio" / "florence-smoke.db") as connection:
        rows = connection.execute("SELECT run_name, metrics FROM metrics").fetchall()
    assert {name for name, _ in rows} == {"smoke"}
    logged = {key for _, metrics in rows for key in json.loads(metrics)}
    assert {"train/loss", "train/learning_rate", "eval/anls"} <= logged
