"""`training_curves.png`: training loss, learning rate and evaluation metrics against the optimizer step.

`TrainingCurvesCallback` redraws it in the run's output folder after every evaluation and at the end of
training, from the Trainer's own `log_history` (the same numbers as trainer_state.json), so a run can be
checked at a glance without TensorBoard or trackio.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

logger = logging.getLogger(__name__)

CURVES_FILE = "training_curves.png"
# Evaluation log keys that are bookkeeping, not quality.
_NOT_METRICS = (
    "eval_loss",
    "eval_runtime",
    "eval_samples_per_second",
    "eval_steps_per_second",
    "eval_count",
    "eval_scored",
)


def _series(log_history: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(entry["step"], entry[key]) for entry in log_history if key in entry and "step" in entry]
    return [step for step, _ in points], [float(value) for _, value in points]


def eval_metric_keys(log_history: Sequence[dict[str, Any]]) -> list[str]:
    """Numeric `eval_*` quality metrics in the log (ANLS, per-source scores, mAP, ...), in first-seen order."""
    keys: dict[str, None] = {}
    for entry in log_history:
        for key, value in entry.items():
            if key.startswith("eval_") and key not in _NOT_METRICS and isinstance(value, int | float):
                keys[key] = None
    return list(keys)


def plot_training_curves(log_history: Sequence[dict[str, Any]], path: Path) -> Path:
    """Write a 3-panel PNG (loss, learning rate, eval metrics vs step) to `path` and return it."""
    figure = Figure(figsize=(15, 4), layout="constrained")
    loss_axes, lr_axes, metric_axes = figure.subplots(1, 3)
    for key, label in (("loss", "train loss"), ("eval_loss", "eval loss")):
        steps, values = _series(log_history, key)
        if steps:
            loss_axes.plot(steps, values, marker="." if key == "eval_loss" else None, label=label)
    loss_axes.set_title("loss")
    steps, values = _series(log_history, "learning_rate")
    lr_axes.plot(steps, values)
    lr_axes.set_title("learning rate")
    lr_axes.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    metric_keys = eval_metric_keys(log_history)
    for key in metric_keys:
        steps, values = _series(log_history, key)
        metric_axes.plot(steps, values, marker="o", label=key.removeprefix("eval_"))
    metric_axes.set_title("eval metrics" if metric_keys else "eval metrics (no evaluation logged)")
    for axes in (loss_axes, lr_axes, metric_axes):
        axes.set_xlabel("step")
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path


class TrainingCurvesCallback(TrainerCallback):
    """Redraws `<output_dir>/training_curves.png` after each evaluation and at the end of training."""

    def _draw(self, args: TrainingArguments, state: TrainerState) -> Path | None:
        # A run that only evaluates has no curve to draw.
        if not state.is_world_process_zero or not any("loss" in entry for entry in state.log_history):
            return None
        return plot_training_curves(state.log_history, Path(args.output_dir) / CURVES_FILE)

    def on_evaluate(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._draw(args, state)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        path = self._draw(args, state)
        if path is not None:
            logger.info("Training curves: %s", path)
