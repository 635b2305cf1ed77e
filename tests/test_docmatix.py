"""Docmatix as a source: the task on the Hub's layout, seeded image and turn fractions (streamed or not), and the
stage 1 (Docmatix) -> stage 2 (DocVQA) chain of the reproduction recipes on the tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import datasets
import pytest
from conftest import REPO_ROOT, run_recipe_subprocess

from florence_recipes.builders.docmatix import write_synthetic_docmatix
from florence_recipes.configs.data import DataArguments
from florence_recipes.configs.parser import parse_recipe_args
from florence_recipes.configs.training import FlorenceTrainingArguments
from florence_recipes.data.sources import data_sources, load_train_dataset
from florence_recipes.errors import RecipeError


@pytest.fixture(scope="module")
def docmatix_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_docmatix(tmp_path_factory.mktemp("data") / "docmatix")


@pytest.fixture(scope="module")
def turns_per_row(docmatix_dir: Path) -> list[int]:
    rows = datasets.load_dataset(str(docmatix_dir), "images", split="train")
    return [len(turns) for turns in rows["texts"]]


def _train_examples(
    docmatix_dir: Path, tmp_path: Path, streaming: bool, seed: int = 42, **fractions: float
) -> list[dict[str, str]]:
    """The training examples the recipe would stream (ids and prompts only: images are not decoded)."""
    args = ["--task", "docmatix", "--dataset_name", str(docmatix_dir), "--dataset_config", "images"]
    args += ["--multi_image_policy", "first", "--streaming", str(streaming).lower(), "--max_steps", "3"]
    args += ["--output_dir", str(tmp_path), "--do_train", "true", "--seed", str(seed), "--report_to", "none"]
    for name, value in fractions.items():
        args += [f"--{name}", str(value)]
    _, data_args, training_args = parse_recipe_args(args)
    train = load_train_dataset(data_sources(data_args, training_args), data_args, training_args.seed)
    return list(train.select_columns(["id", "image_id", "prompt"]))


def _within_4_sigma(observed: float, mean: float, variance: float) -> bool:
    return abs(observed - mean) <= 4 * math.sqrt(variance)


def test_image_and_turn_fractions_within_4_sigma_streamed(
    docmatix_dir: Path, turns_per_row: list[int], tmp_path: Path
) -> None:
    p, q = 0.3, 0.4
    rows, total_turns = len(turns_per_row), sum(turns_per_row)
    images_only = _train_examples(docmatix_dir, tmp_path, True, image_fraction=p)
    # A row is one document: its examples' ids are <source>-<split>-<row>-<turn> (image ids are content digests,
    # and the fixture's documents share pictures).
    kept_rows = {example["id"].rsplit("-", 1)[0] for example in images_only}
    assert _within_4_sigma(len(kept_rows), rows * p, rows * p * (1 - p)), (len(kept_rows), rows)
    assert len(images_only) < total_turns  # every turn of a kept row, and only those
    # Each row: kept with probability p, then each of its n turns with probability q (independent coins), so
    # the number of examples X_r has mean p q n and E[X_r^2] = p (n q (1 - q) + n^2 q^2).
    both = _train_examples(docmatix_dir, tmp_path, True, image_fraction=p, turn_fraction=q)
    mean = sum(p * q * n for n in turns_per_row)
    variance = sum(p * (n * q * (1 - q) + (n * q) ** 2) - (p * q * n) ** 2 for n in turns_per_row)
    assert _within_4_sigma(len(both), mean, variance), (len(both), mean, variance)
    # The turn coins are independent of the row coins: the rows seen are the same rows (or fewer, when no turn
    # of a row was kept), and within them about q of the turns survive.
    assert {example["id"].rsplit("-", 1)[0] for example in both} <= kept_rows
    n_kept = len(images_only)
    assert _within_4_sigma(len(both), n_kept * q, n_kept * q * (1 - q)), (len(both), n_kept)
    assert all(example["prompt"].startswith("<DocVQA>") for example in both)


def test_fractions_are_seeded_and_the_same_streamed_or_not(docmatix_dir: Path, tmp_path: Path) -> None:
    fractions = {"image_fraction": 0.5, "turn_fraction": 0.5}
    streamed = _train_examples(docmatix_dir, tmp_path, True, **fractions)
    in_memory = _train_examples(docmatix_dir, tmp_path, False, **fractions)
    again = _train_examples(docmatix_dir, tmp_path, True, **fractions)
    other_seed = _train_examples(docmatix_dir, tmp_path, True, seed=7, **fractions)

    def selected(examples: list[dict[str, str]]) -> list[str]:
        return sorted(example["id"] for example in examples)

    assert selected(streamed) == selected(in_memory) == selected(again)  # the stream is shuffled, not changed
    assert selected(other_seed) != selected(streamed)


def test_fractions_need_a_multi_turn_source(tmp_path: Path) -> None:
    training_args = FlorenceTrainingArguments(output_dir=str(tmp_path), report_to="none")
    with pytest.raises(RecipeError, match=r"task 'docvqa' has one question per row: use `fraction`"):
        data_sources(DataArguments(task="docvqa", image_fraction=0.5), training_args)
    mixture = [{"dataset": "d", "task": "docmatix", "config": "images", "turn_fraction": 1.5}]
    with pytest.raises(RecipeError, match=r"dataset_mixture\[0\] \(d, images\): `turn_fraction` must be"):
        data_sources(DataArguments(task="docmatix", dataset_mixture=mixture), training_args)
    sources = data_sources(
        DataArguments(task="docmatix", dataset_mixture=[{**mixture[0], "turn_fraction": 0.2}]), training_args
    )
    assert (sources[0].image_fraction, sources[0].turn_fraction, sources[0].name) == (1.0, 0.2, "docmatix")


def test_docmatix_schema_is_checked(tmp_path: Path) -> None:
    """The `pdf` config (PDF bytes, no images) and turns without user/assistant fail with one line."""
    from florence_recipes.data.loading import load_task_split
    from florence_recipes.data.tasks import get_task

    pdf_rows = tmp_path / "pdf.jsonl"
    pdf_rows.write_text(json.dumps({"pdf": "x", "texts": [{"user": "q", "assistant": "a", "source": "s"}]}))
    with pytest.raises(
        RecipeError, match=r"missing column\(s\) images needed by task 'docmatix'; found: pdf"
    ):
        load_task_split(get_task("docmatix"), str(pdf_rows), "train")
    image = Path(tmp_path / "page.png")
    from PIL import Image

    Image.new("RGB", (8, 8), "white").save(image)
    bad = tmp_path / "bad.parquet"
    features = datasets.Features(
        {"images": [datasets.Image()], "texts": [{"question": datasets.Value("string")}]}
    )
    datasets.Dataset.from_dict(
        {"images": [[{"path": str(image), "bytes": None}]], "texts": [[{"question": "q"}]]}, features=features
    ).to_parquet(str(bad))
    with pytest.raises(RecipeError, match=r"row 0, turn 0: expected a mapping with keys user, assistant"):
        load_task_split(get_task("docmatix"), str(bad), "train")


@pytest.mark.slow
def test_stage1_docmatix_stream_then_stage2_docvqa_chain(
    docmatix_dir: Path, docvqa_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The smoke YAMLs of the two-stage recipe, chained as the README says: stage 2 loads stage 1's output,
    trains on DocVQA, evaluates with generation and leaves a model that reloads."""
    stage1, stage2 = tmp_path / "stage1", tmp_path / "stage2"
    first = run_recipe_subprocess(
        "docmatix.py",
        "--config", str(REPO_ROOT / "recipes/docmatix/smoke_stage1.yaml"),
        "--model_name_or_path", str(tiny_model_dir),
        "--dataset_name", str(docmatix_dir),
        "--output_dir", str(stage1),
    )  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    assert "***** Budget *****" in first.stdout and "optimizer steps: 6" in first.stdout
    assert json.loads((stage1 / "train_results.json").read_text())["train_loss"] > 0
    assert (stage1 / "model.safetensors").is_file()

    second = run_recipe_subprocess(
        "docvqa.py",
        "--config", str(REPO_ROOT / "recipes/docvqa/smoke_from_docmatix.yaml"),
        "--model_name_or_path", str(stage1),
        "--dataset_name", str(docvqa_dir),
        "--output_dir", str(stage2),
    )  # fmt: skip
    assert second.returncode == 0, second.stderr[-3000:]
    results = json.loads((stage2 / "all_results.json").read_text())
    assert 0 <= results["eval_anls"] <= 1 and results["eval_samples"] > 0
    assert "finetuned_from" not in results  # (sanity: results are metrics only)
    card = (stage2 / "README.md").read_text()
    assert str(stage1) in card  # the card names stage 1 as the base model

    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(stage2)
    processor = AutoProcessor.from_pretrained(stage2)
    assert model.config.model_type == "florence2" and processor.tokenizer is not None
