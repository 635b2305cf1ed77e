"""NonFiniteLossGuard: NaN losses never reach the weights; past the patience the run stops at that step and
the last checkpoint on disk stays the last good one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
import pytest
import torch
from conftest import sources_of, standard_features
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback

from florence_recipes.configs.parser import parse_recipe_args
from florence_recipes.data.collator import IGNORE_INDEX, Florence2Collator
from florence_recipes.errors import RecipeError
from florence_recipes.training.callbacks import NonFiniteLossGuard
from florence_recipes.training.checkpoints import last_complete_checkpoint
from florence_recipes.training.trainer import FlorenceTrainer

MAX_STEPS = 6


class PoisonedCollator(Florence2Collator):
    """Masks every label of the batches of the given (1-based) optimizer steps: their mean loss is 0/0 = NaN,
    as for a batch whose targets all went missing."""

    def __init__(self, processor: Any, poisoned_steps: set[int]) -> None:
        super().__init__(processor)
        self.poisoned_steps = poisoned_steps
        self.calls = 0

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = super().__call__(features)
        self.calls += 1
        if self.calls in self.poisoned_steps:
            batch["labels"][:] = IGNORE_INDEX
        return batch


class WeightsPerStep(TrainerCallback):
    def __init__(self) -> None:
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    def on_step_end(self, args, state, control, model=None, **kwargs) -> None:
        self.weights[state.global_step] = {k: v.detach().clone() for k, v in model.state_dict().items()}


def train(
    tiny_model_dir: Path, output_dir: Path, poisoned: set[int], patience: int, save: bool = True
) -> tuple[Any, ...]:
    _, _, training_args = parse_recipe_args(
        [
            "--model_name_or_path", str(tiny_model_dir), "--output_dir", str(output_dir),
            "--max_steps", str(MAX_STEPS), "--per_device_train_batch_size", "2", "--learning_rate", "1e-3",
            "--save_strategy", "steps" if save else "no", "--save_steps", "1", "--dataloader_num_workers", "0",
            "--report_to", "none", "--disable_tqdm", "true", "--seed", "0",
            "--nonfinite_loss_patience", str(patience),
        ]
    )  # fmt: skip
    rows = {
        "id": [str(i) for i in range(4)], "image": [Image.new("RGB", (64, 64), "white")] * 4,
        "image_id": ["0"] * 4, "prompt": ["<DocVQA>What?"] * 4, "target": ["42"] * 4, "answers": [["42"]] * 4,
        "tags": [[]] * 4, "source": ["docvqa"] * 4,
    }  # fmt: skip
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    weights = WeightsPerStep()
    trainer = FlorenceTrainer(
        model=AutoModelForImageTextToText.from_pretrained(tiny_model_dir),
        args=training_args,
        processor=processor,
        sources=sources_of("docvqa"),
        train_dataset=datasets.Dataset.from_dict(rows, features=standard_features()),
        callbacks=[weights],
    )
    trainer.data_collator = PoisonedCollator(processor, poisoned)
    guard = trainer.nonfinite_guard  # the trainer's own guard, built from nonfinite_loss_patience
    try:
        trainer.train()
    except RecipeError as err:  # past the patience: one line naming the step and the last good checkpoint
        assert guard.failure is not None and str(err).startswith(guard.failure)
        assert f"last good checkpoint: {last_complete_checkpoint(output_dir) or 'none yet'}" in str(err)
    else:
        assert guard.failure is None
    return trainer, guard, weights.weights


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def all_finite(weights: dict[str, torch.Tensor]) -> bool:
    return all(torch.isfinite(v).all() for v in weights.values())


def test_isolated_nan_steps_are_skipped_within_patience(tiny_model_dir: Path, tmp_path: Path) -> None:
    trainer, guard, weights = train(tiny_model_dir, tmp_path, poisoned={3, 5}, patience=1, save=False)
    assert guard.failure is None and trainer.state.global_step == MAX_STEPS
    assert same(weights[3], weights[2]) and same(weights[5], weights[4])  # NaN updates never applied
    assert not same(weights[4], weights[3])  # the good steps still train
    assert all_finite(weights[MAX_STEPS])


def test_nan_past_patience_stops_at_that_step_and_keeps_the_last_good_checkpoint(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    trainer, guard, weights = train(tiny_model_dir, tmp_path, poisoned={3, 4}, patience=1)
    assert trainer.state.global_step == 4
    assert guard.failure is not None and "not finite at step 4 (2 step(s) in a row" in guard.failure
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == [
        "checkpoint-1",
        "checkpoint-2",
        "checkpoint-3",
    ]
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-3")
    saved = load_file(tmp_path / "checkpoint-3" / "model.safetensors")
    assert all_finite(saved) and same(weights[4], weights[2])


def test_patience_zero_stops_at_the_first_nan(tiny_model_dir: Path, tmp_path: Path) -> None:
    trainer, guard, _ = train(tiny_model_dir, tmp_path, poisoned={2}, patience=0)
    assert trainer.state.global_step == 2 and "not finite at step 2 (1 step(s) in a row" in guard.failure
    assert not (tmp_path / "checkpoint-2").exists()


def test_negative_patience_is_refused() -> None:
    with pytest.raises(ValueError, match="patience must be >= 0"):
        NonFiniteLossGuard(-1)
