"""The benchmark command runs end to end on the tiny model; batched eval grouped by length keeps dataset order."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import sources_of
from transformers import AutoProcessor

from florence_recipes.configs.model import ModelArguments
from florence_recipes.configs.training import FlorenceTrainingArguments
from florence_recipes.data.loading import column_values, load_task_split
from florence_recipes.data.tasks import get_task
from florence_recipes.errors import RecipeError
from florence_recipes.models.loading import load_model, set_generation_length
from florence_recipes.tooling.benchmark_ours import BatchRecordingTrainer
from florence_recipes.tooling.measure import count_step_flops, run_in_fresh_process
from florence_recipes.training.flops import count_flops
from florence_recipes.training.speed import length_sorted_order, restore_dataset_order
from florence_recipes.training.trainer import FlorenceTrainer

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_command_on_tiny_writes_the_documented_json(tmp_path: Path) -> None:
    output = tmp_path / "results.json"
    command = [
        sys.executable, str(REPO_ROOT / "recipes" / "benchmark.py"),
        "--model-size", "tiny", "--mode", "frozen_vision", "--steps", "2", "--output", str(output),
        # Small enough for CI: no timing is asserted, only that every measurement is produced.
        "--work-dir", str(tmp_path / "work"), "--document-size", "320x452", "--batch-size", "3",
        "--eval-samples", "3", "--eval-max-new-tokens", "4", "--loader-batches", "1",
        "--ablate", "feature_cache",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]

    data = json.loads(output.read_text())
    for path in ("ours", "seed"):
        for key in (
            "train_samples_per_s",
            "train_tokens_per_s",
            "mfu",
            "peak_memory_bytes",
            "eval_samples_per_s",
        ):
            assert data[path][key] > 0, (path, key)
        assert len(data[path]["step_seconds"]) == 2
        assert data[path]["flops_per_step"] > 0 and data[path]["loader_samples_per_s"] > 0
        # MFU: the FLOPs of the timed steps themselves over their time.
        steps = data[path]
        assert len(steps["step_flops"]) == 2
        assert steps["mfu"] == pytest.approx(
            sum(steps["step_flops"]) / sum(steps["step_seconds"]) / (data["peak_tflops"] * 1e12)
        )
    per_step = data["ours"]["train_samples_per_s"] / data["seed"]["train_samples_per_s"]
    assert data["train_ratio_per_step"] == per_step
    # The headline ratio pays for the feature cache's build, amortised over the YAML's 7 epochs.
    epochs, samples = data["ours"]["num_train_epochs"], 15
    ours_seconds = (
        epochs * samples / data["ours"]["train_samples_per_s"] + data["ours"]["cache_build_seconds"]
    )
    assert data["train_ratio"] == pytest.approx(
        epochs * samples / data["seed"]["train_samples_per_s"] / ours_seconds
    )
    assert data["train_ratio"] < per_step
    assert data["device"] and data["device_type"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert data["seed"]["precision"] == "fp32"
    assert data["ours"]["settings"]["feature_cache"] != "none"  # the frozen_vision YAML's default
    assert (
        data["ours"]["cache_images"] == 5
    )  # (2 warm-up + 2 timed steps + 1 loader batch) x 3 questions, 3 per document
    assert list(data["ablations"]) == ["feature_cache"]
    assert data["ablations"]["feature_cache"]["train_samples_per_s"] > 0
    # The printed table: a header with the device and a row per measurement, ratios last.
    assert "| train samples/s |" in result.stdout and data["device"] in result.stdout
    assert f"{data['train_ratio']:.2f}x" in result.stdout


def test_eval_order_sorts_by_length_keeps_images_together_and_is_restored() -> None:
    prompts = ["a", "abcd", "ab", "abc", "abcd", "abcdef"]
    image_ids = ["x", "y", "z", "x", "w", "z"]
    order = length_sorted_order(prompts, image_ids)
    assert order == [5, 2, 1, 4, 3, 0]  # z (6, 2 chars), y (4), w (4), x (3, 1): longest group first
    # One question per image: plain length order.
    assert length_sorted_order(prompts, [str(i) for i in range(6)]) == [5, 1, 4, 3, 2, 0]
    produced = [f"answer {i}" for i in order]  # what a run in that order yields
    assert restore_dataset_order(produced, order) == [f"answer {i}" for i in range(6)]
    with pytest.raises(ValueError, match="5 evaluation outputs for 6 examples"):
        restore_dataset_order(produced[:5], order)


def test_eval_grouped_by_length_scores_in_dataset_order(
    tiny_model_dir: Path, docvqa_dir: Path, tmp_path: Path
) -> None:
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    rows = load_task_split(get_task("docvqa"), str(docvqa_dir), "validation")
    order = length_sorted_order(column_values(rows, "prompt"), column_values(rows, "image_id"))
    assert order != list(range(len(rows)))  # the order really changes

    images_seen: list[int] = []

    def evaluate(group_eval_by_length: bool, dedup_vision: bool = False) -> tuple[Any, ...]:
        images_seen.clear()
        model = load_model(ModelArguments(model_name_or_path=str(tiny_model_dir)))
        set_generation_length(model, 8)
        encode_images = model.model.get_image_features
        model.model.get_image_features = lambda pixel_values, **kw: (
            images_seen.append(len(pixel_values)) or encode_images(pixel_values, **kw)
        )
        args = FlorenceTrainingArguments(
            output_dir=str(tmp_path),
            per_device_eval_batch_size=6,
            dataloader_num_workers=0,
            report_to="none",
            use_cpu=True,
            generation_max_length=8,
            group_eval_by_length=group_eval_by_length,
            dedup_vision=dedup_vision,
        )
        trainer = FlorenceTrainer(
            model=model, args=args, processor=processor, sources=sources_of("docvqa"), eval_dataset=rows
        )
        evaluated = trainer.eval_dataset  # in the order batches run
        # The scorer scores each generated answer against the gold answers of its own question.
        assert trainer.scorer.references == column_values(evaluated, "answers")
        expected_order = order if group_eval_by_length else list(range(len(rows)))
        assert column_values(evaluated, "id") == [column_values(rows, "id")[i] for i in expected_order]
        return trainer.predict_items(metric_key_prefix="test")

    plain_texts, plain_items, plain_metrics = evaluate(False)
    assert sum(images_seen) == 2 * 12  # Seq2SeqTrainer: every question's image, in generate and for the loss
    grouped_texts, grouped_items, grouped_metrics = evaluate(True)
    assert grouped_texts == plain_texts and grouped_items == plain_items  # returned in dataset order
    # (The loss is a mean of per-batch means, so it moves with the batch composition; the scores do not.)
    for key in ("test_anls", "test_exact_match", "test_count"):
        assert grouped_metrics[key] == plain_metrics[key], key

    # dedup_vision in evaluation: one vision pass per image for generation and loss; same results.
    dedup_texts, dedup_items, dedup_metrics = evaluate(True, dedup_vision=True)
    assert sum(images_seen) == 4  # 12 questions about 4 images, batches of 6: each image encoded once
    assert dedup_texts == grouped_texts and dedup_items == grouped_items
    assert dedup_metrics["test_loss"] == pytest.approx(grouped_metrics["test_loss"], abs=1e-5)
    assert abs(dedup_metrics["test_loss"] - grouped_metrics["test_loss"]) < 1e-5


@pytest.mark.parametrize("groups", [1, 4, 64])
@pytest.mark.parametrize("input_grad", [True, False])
def test_flop_count_of_a_convolution_backward_is_its_forward_per_gradient(
    groups: int, input_grad: bool
) -> None:
    """Backward = one forward's FLOPs per gradient it computes (weight, and input when it needs one), grouped
    or not: torch's own formula counts a depthwise weight gradient `groups` times over."""
    conv = torch.nn.Conv2d(64, 64, 3, padding=1, groups=groups)
    inputs = torch.randn(2, 64, 16, 16, requires_grad=input_grad)
    with count_flops() as counter:
        outputs = conv(inputs)
    forward = counter.get_total_flops()
    with count_flops() as counter:
        outputs.sum().backward()
    assert counter.get_total_flops() == forward * (2 if input_grad else 1)


def test_step_flops_replayed_after_timing_equal_those_counted_inside_each_step(
    tiny_model_dir: Path, docvqa_dir: Path, tmp_path: Path
) -> None:
    """Batches of 2 from documents of 3 questions hold one image or two (`group_by_image`), so steps differ:
    each timed step's FLOPs, replayed after training, match a count taken inside that very step."""
    rows = load_task_split(get_task("docvqa"), str(docvqa_dir), "train").select(range(9))
    args = FlorenceTrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        max_steps=4,
        dataloader_num_workers=0,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        group_by_image=True,
        dedup_vision=True,
    )
    inside: list[int] = []

    class CountingInside(BatchRecordingTrainer):
        def training_step(self, *step_args: Any, **kwargs: Any) -> Any:
            with count_flops() as counter:
                loss = super().training_step(*step_args, **kwargs)
            inside.append(counter.get_total_flops())
            return loss

    trainer = CountingInside(
        model=load_model(ModelArguments(model_name_or_path=str(tiny_model_dir))),
        args=args,
        processor=AutoProcessor.from_pretrained(tiny_model_dir),
        sources=sources_of("docvqa"),
        train_dataset=rows,
    )
    trainer.train()
    images = [len(batch["pixel_values"]) for batch in trainer.step_batches]
    assert sorted(set(images)) == [1, 2]  # both kinds of step ran
    replayed = count_step_flops(trainer.step_batches, trainer.replay_step)
    assert replayed == inside
    one, two = (replayed[images.index(n)] for n in (1, 2))
    assert two > one


def _killed_by_the_kernel() -> None:
    os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's out-of-memory killer does


def _refuses() -> None:
    raise RecipeError("--batch-size 9: too large")


def test_a_path_killed_for_memory_ends_the_benchmark_with_one_line_naming_it() -> None:
    with pytest.raises(
        RecipeError, match=r"^our path without dedup at batch 6: its process was killed.*--batch-size"
    ):
        run_in_fresh_process("our path without dedup at batch 6", _killed_by_the_kernel)
    with pytest.raises(RecipeError, match=r"^--batch-size 9: too large$"):
        run_in_fresh_process("the blog loop", _refuses)
    assert run_in_fresh_process("a sum", sum, [1, 2]) == 3
