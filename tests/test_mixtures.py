"""Mixtures: entries checked up front, reproducible weighted interleaving, per-source eval metrics."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from datasets import Dataset
from transformers import AutoProcessor, EvalPrediction

from florence_recipes.builders.datasets import (
    write_synthetic_cauldron,
    write_synthetic_detection,
    write_synthetic_vqa_jsonl,
)
from florence_recipes.configs.data import DataArguments
from florence_recipes.configs.parser import parse_recipe_args
from florence_recipes.configs.training import FlorenceTrainingArguments
from florence_recipes.data.sources import data_sources, load_eval_dataset, load_train_dataset, mix_datasets
from florence_recipes.errors import RecipeError
from florence_recipes.evaluation.scoring import build_scorer


@pytest.fixture(scope="module")
def cauldron_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_cauldron(tmp_path_factory.mktemp("data") / "the_cauldron")


@pytest.fixture
def training_args(tmp_path: Path) -> FlorenceTrainingArguments:
    return FlorenceTrainingArguments(output_dir=str(tmp_path), do_train=True, do_eval=True, report_to="none")


def counted(name: str, n: int) -> Dataset:
    return Dataset.from_dict({"source": [name] * n, "index": list(range(n))})


# --- mixing ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["first_exhausted", "all_exhausted"])
def test_weights_give_the_requested_proportions(strategy: str) -> None:
    weights = {"a": 5.0, "b": 3.0, "c": 2.0}  # unnormalised on purpose
    mixed = mix_datasets([counted(name, 3000) for name in weights], list(weights.values()), 0, strategy)
    counts = Counter(mixed["source"])
    total = len(mixed)
    # first_exhausted stops when `a` (drawn half the time) runs out, all_exhausted when `c` does.
    assert total == pytest.approx(6000 if strategy == "first_exhausted" else 15000, rel=0.1)
    for name, weight in weights.items():
        share = weight / sum(weights.values())
        assert abs(counts[name] / total - share) < 4 * np.sqrt(share * (1 - share) / total)  # 4 sigma
    if strategy == "all_exhausted":
        assert all(len(set(mixed.filter(lambda r, n=n: r["source"] == n)["index"])) == 3000 for n in weights)


def test_a_fixed_seed_gives_the_same_order_twice() -> None:
    parts = [counted(name, 200) for name in "abc"]

    def order(seed: int) -> list[tuple[str, int]]:
        mixed = mix_datasets(parts, [0.5, 0.3, 0.2], seed)
        return list(zip(mixed["source"], mixed["index"], strict=True))

    assert order(42) == order(42) and order(42) != order(43)
    streamed = [part.to_iterable_dataset() for part in parts]

    def streamed_order(seed: int) -> list[tuple[str, int]]:
        return [(r["source"], r["index"]) for r in mix_datasets(streamed, [0.5, 0.3, 0.2], seed)]

    assert streamed_order(42) == streamed_order(42) != streamed_order(43)
    # Without weights the parts are concatenated in order.
    assert mix_datasets(parts)["source"] == ["a"] * 200 + ["b"] * 200 + ["c"] * 200


def test_fraction_and_weights_on_cauldron_subsets(cauldron_dir: Path, training_args) -> None:
    entries: list[dict[str, Any]] = [
        {"dataset": str(cauldron_dir), "config": "chartqa", "fraction": 0.5},
        {"dataset": str(cauldron_dir), "config": "ai2d"},
    ]
    data_args = DataArguments(task="cauldron", dataset_mixture=entries)
    sources = data_sources(data_args, training_args)
    train = load_train_dataset(sources, data_args, seed=1)
    # 20 examples per subset (see test_tasks); half of chartqa, drawn with the seed; concatenated.
    assert Counter(train["source"]) == {"chartqa": 10, "ai2d": 20}
    assert train["id"] == load_train_dataset(sources, data_args, seed=1)["id"]
    assert train["id"][:10] != load_train_dataset(sources, data_args, seed=2)["id"][:10]

    weighted = [{**entry, "weight": 1.0, "fraction": 1.0} for entry in entries]
    data_args = DataArguments(
        task="cauldron", dataset_mixture=weighted, mixture_stopping_strategy="all_exhausted"
    )
    train = load_train_dataset(data_sources(data_args, training_args), data_args, seed=1)
    assert {subset: len(set(ids)) for subset, ids in _ids_by_source(train).items()} == {
        "chartqa": 20,
        "ai2d": 20,
    }


def _ids_by_source(dataset: Dataset) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for source, row_id in zip(dataset["source"], dataset["id"], strict=True):
        out.setdefault(source, []).append(row_id)
    return out


# --- entries checked before anything is loaded ----------------------------------------------------------

VQA = {"dataset": "my_data", "task": "vqa"}


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([], r"^dataset_mixture: expected a non-empty list"),
        (["my_data"], r"^dataset_mixture\[0\]: expected a mapping"),
        ([{**VQA, "wieght": 1}], r"^dataset_mixture\[0\]: unknown key\(s\) 'wieght'; valid keys: dataset, config,"),
        ([{"task": "vqa"}], r"^dataset_mixture\[0\]: `dataset` \(a Hub id or a local path\) is required for task 'vqa'"),
        ([{**VQA, "task": "vqa2"}], r"^dataset_mixture\[0\]: unknown task 'vqa2'; valid tasks: caption, cauldron"),
        ([VQA, {**VQA, "dataset": "y", "weight": 0}], r"^dataset_mixture\[1\] \(y\): `weight` must be a number > 0"),
        ([{**VQA, "fraction": 1.5}], r"^dataset_mixture\[0\] \(my_data\): `fraction` must be a number in \(0, 1\]"),
        ([{**VQA, "fraction": True}], r"`fraction` must be a number"),
        ([{**VQA, "split": 3}], r"^dataset_mixture\[0\] \(my_data\): `split` must be a non-empty string"),
        ([{**VQA, "columns": ["question"]}], r"`columns` must map the task's column names to the dataset's"),
        (
            [{"config": "chart_qa"}],
            r"^dataset_mixture\[0\] \(HuggingFaceM4/the_cauldron, chart_qa\): task 'cauldron': unknown subset "
            r"'chart_qa'; valid subsets: ai2d",
        ),
        ([{**VQA, "weight": 1, "name": "a"}, {**VQA, "name": "b"}], r"give `weight` to every entry or to none \(only entries 0 have one\)"),
        ([VQA, {**VQA, "dataset": "other"}], r"^dataset_mixture: 2 entries are named 'vqa'; give them distinct `name`s"),
    ],
)  # fmt: skip
def test_bad_entries_fail_with_one_line_naming_the_entry(
    entries: list[Any], message: str, training_args
) -> None:
    with pytest.raises(RecipeError, match=message) as failure:
        data_sources(DataArguments(task="cauldron", dataset_mixture=entries), training_args)
    assert "\n" not in str(failure.value)


def test_entry_defaults(training_args) -> None:
    data_args = DataArguments(
        task="cauldron",
        train_split="train[10:]",
        eval_split="train[:10]",
        dataset_mixture=[
            {"config": "chartqa", "weight": 2},
            {
                "task": "docvqa",
                "split": "train",
                "eval_split": "validation",
                "weight": 1,
                "name": "docvqa_hf",
            },
            {"config": "docvqa", "weight": 1, "columns": {"texts": "conversations"}},
        ],
    )
    chart, hf, doc = data_sources(data_args, training_args)
    assert (chart.dataset, chart.config, chart.split, chart.eval_split) == (
        "HuggingFaceM4/the_cauldron", "chartqa", "train[10:]", "train[:10]"
    )  # fmt: skip
    assert (
        chart.name == "chartqa"
        and chart.weight == 2.0
        and chart.metrics == ("relaxed_accuracy", "exact_match")
    )
    assert (hf.dataset, hf.task.name, hf.name, hf.metrics[0]) == (
        "HuggingFaceM4/DocumentVQA",
        "docvqa",
        "docvqa_hf",
        "anls",
    )
    assert doc.name == "docvqa" and doc.columns == {"texts": "conversations"}


def test_mixture_from_yaml_and_command_line(tmp_path: Path) -> None:
    config = tmp_path / "mix.yaml"
    config.write_text(
        "task: vqa\ndataset_mixture:\n  - {dataset: a, weight: 2}\n  - {dataset: b, weight: 1, name: b}\n"
    )
    _, data_args, _ = parse_recipe_args(["--config", str(config), "--output_dir", str(tmp_path)])
    assert data_args.dataset_mixture == [
        {"dataset": "a", "weight": 2},
        {"dataset": "b", "weight": 1, "name": "b"},
    ]
    cli = '[{"dataset": "c", "task": "caption", "fraction": 0.25}]'
    _, data_args, _ = parse_recipe_args(
        ["--config", str(config), "--output_dir", str(tmp_path), "--dataset_mixture", cli]
    )
    assert data_args.dataset_mixture == [{"dataset": "c", "task": "caption", "fraction": 0.25}]


@pytest.mark.parametrize(
    ("overrides", "args", "message"),
    [
        ({}, {"max_steps": -1}, r"^streaming: true needs max_steps > 0"),
        ({"dataset_mixture": [{**VQA, "fraction": 0.5}]}, {}, r"^vqa: `fraction` needs the source's length"),
        ({"eval_split": "validation"}, {}, r"^vqa: streamed eval split 'validation' has no end; set max_eval_samples"),
        ({"train_split": "train[:90%]"}, {}, r"^split 'train\[:90%\]': a streamed split has no length"),
    ],
)  # fmt: skip
def test_streaming_options_are_checked(overrides: dict, args: dict, message: str, tmp_path: Path) -> None:
    data = {
        "task": "vqa",
        "dataset_name": "my_data",
        "streaming": True,
        "eval_split": "train[:100]",
    } | overrides
    training = {"max_steps": 10} | args
    training_args = FlorenceTrainingArguments(
        output_dir=str(tmp_path), do_train=True, do_eval=True, **training
    )
    with pytest.raises(RecipeError, match=message):
        data_sources(DataArguments(**data), training_args)
    # max_eval_samples bounds the eval split instead of a row range.
    if "eval_split" in overrides:
        data_sources(DataArguments(**data, max_eval_samples=50), training_args)


# --- per-source eval metrics ----------------------------------------------------------------------------


def _as_predictions(tokenizer, texts: list[str]) -> EvalPrediction:
    ids = tokenizer(texts, padding="longest", return_tensors="np")
    ids = np.where(ids["attention_mask"] == 1, ids["input_ids"], -100)
    return EvalPrediction(predictions=ids, label_ids=ids)


def test_mixture_reports_each_source_with_its_own_metrics(
    cauldron_dir: Path, tiny_model_dir: Path, training_args
) -> None:
    entries = [
        {"dataset": str(cauldron_dir), "config": c, "weight": 1} for c in ("docvqa", "chartqa", "ai2d")
    ]
    data_args = DataArguments(task="cauldron", dataset_mixture=entries, eval_split="train[:8]")
    sources = data_sources(data_args, training_args)
    eval_dataset = load_eval_dataset(sources, data_args)
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    metrics = build_scorer(processor, eval_dataset, sources)
    rows = eval_dataset.select_columns(["source", "target"]).to_list()

    def nudged(row: dict[str, str]) -> str:
        # docvqa: exact; chartqa: numbers 4% high (relaxed-correct, not exact); ai2d: always "Answer: A".
        if row["source"] == "chartqa" and re.fullmatch(r"-?\d+", row["target"]):
            return f"{int(row['target']) * 1.04:.2f}"
        return "Answer: A" if row["source"] == "ai2d" else row["target"]

    scores = metrics(_as_predictions(processor.tokenizer, [nudged(row) for row in rows]))
    by_source = {s: [r["target"] for r in rows if r["source"] == s] for s in ("docvqa", "chartqa", "ai2d")}
    numeric = sum(bool(re.fullmatch(r"-?\d+", t)) for t in by_source["chartqa"])
    assert 0 < numeric < len(by_source["chartqa"])  # both kinds of answer are covered
    assert scores["docvqa_anls"] == 1.0 and scores["docvqa_exact_match"] == 1.0
    assert scores["chartqa_relaxed_accuracy"] == 1.0
    assert scores["chartqa_exact_match"] == pytest.approx(1 - numeric / len(by_source["chartqa"]))
    assert scores["ai2d_exact_match"] == pytest.approx(
        by_source["ai2d"].count("Answer: A") / len(by_source["ai2d"])
    )
    assert scores["count"] == scores["scored"] == len(rows)
    assert set(scores) == {
        "exact_match", "levenshtein", "count", "scored", "docvqa_anls", "docvqa_exact_match", "chartqa_relaxed_accuracy",
        "chartqa_exact_match", "ai2d_exact_match",
    }  # fmt: skip


def test_box_and_text_sources_cannot_share_an_eval(
    tmp_path: Path, tiny_model_dir: Path, training_args
) -> None:
    boxes = write_synthetic_detection(tmp_path / "boxes", num_train=2, num_validation=2)
    vqa = write_synthetic_vqa_jsonl(tmp_path / "vqa", num_train=2, num_validation=2)
    entries = [{"dataset": str(boxes), "task": "detection"}, {"dataset": str(vqa), "task": "vqa"}]
    data_args = DataArguments(dataset_mixture=entries)
    sources = data_sources(data_args, training_args)
    eval_dataset = load_eval_dataset(sources, data_args)
    with pytest.raises(
        RecipeError, match=r"^eval: box sources \(detection\) and text sources \(vqa\) cannot be scored"
    ):
        build_scorer(AutoProcessor.from_pretrained(tiny_model_dir), eval_dataset, sources)
