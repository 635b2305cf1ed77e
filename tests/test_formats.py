"""Other tools' dataset layouts (`florence_recipes.data.formats`): maestro JSONL, COCO (Roboflow and plain) and
LLaVA conversations, written by `builders.formats` in each tool's own layout, read as they are by the existing
tasks, end to end through recipes/custom.py, plus their bad inputs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO_ROOT
from test_recipe_tasks import run

from florence_recipes.builders.formats import (
    write_coco_detection,
    write_llava_conversations,
    write_maestro_jsonl,
)
from florence_recipes.configs import DATASET_FORMATS
from florence_recipes.configs.parser import parse_recipe_args
from florence_recipes.data.formats import FORMATS, read_format_split
from florence_recipes.data.sources import data_sources, format_metrics, load_eval_dataset, load_train_dataset
from florence_recipes.errors import RecipeError

SMOKE = REPO_ROOT / "recipes" / "custom" / "vqa_jsonl_smoke.yaml"
BUILDERS = {
    "maestro": lambda out: write_maestro_jsonl(out, counts=(8, 4, 2)),
    "maestro-detection": lambda out: write_maestro_jsonl(out, task="detection", counts=(8, 4, 2)),
    "roboflow-coco": lambda out: write_coco_detection(out, counts=(8, 4, 2)),
    "coco": lambda out: write_coco_detection(out, layout="coco", counts=(8, 4)),
    "llava": lambda out: write_llava_conversations(out, counts=(8, 4)),
}


@pytest.fixture(autouse=True)
def _fresh_reads() -> None:
    read_format_split.cache_clear()  # tests rewrite files under the same paths


def args_for(dataset: Path, tmp_path: Path, *extra: str) -> tuple[Any, Any]:
    """The done-when command's arguments: the VQA smoke YAML, unchanged but for the dataset and output."""
    _, data_args, training_args = parse_recipe_args(
        [
            "--config",
            str(SMOKE),
            "--dataset_name",
            str(dataset),
            "--output_dir",
            str(tmp_path / "out"),
            *extra,
        ]
    )
    return data_args, training_args


def loaded(dataset: Path, tmp_path: Path, *extra: str) -> tuple[Any, Any, Any, dict[str, int]]:
    data_args, training_args = args_for(dataset, tmp_path, *extra)
    sources = data_sources(data_args, training_args)
    train, evaluation = load_train_dataset(sources, data_args, 0), load_eval_dataset(sources, data_args)
    counts = format_metrics(sources, data_args, "train") | format_metrics(sources, data_args, "eval")
    return sources[0], train, evaluation, counts


def build(kind: str, tmp_path: Path) -> Path:
    return BUILDERS[kind](tmp_path / kind)


# --- The layouts as each tool writes them ----------------------------------------------------------------


def test_builders_write_each_tools_layout(tmp_path: Path) -> None:
    maestro = build("maestro", tmp_path)
    for split in ("train", "valid", "test"):
        rows = [json.loads(line) for line in (maestro / split / "annotations.jsonl").read_text().splitlines()]
        assert all(
            set(row) == {"image", "prefix", "suffix"} and (maestro / split / row["image"]).is_file()
            for row in rows
        )
        assert all(re.fullmatch(r"image_\d{4}_png\.rf\.[0-9a-f]{32}\.jpg", row["image"]) for row in rows)
    roboflow = build("roboflow-coco", tmp_path)
    coco = json.loads((roboflow / "valid" / "_annotations.coco.json").read_text())
    assert set(coco) == {"info", "licenses", "categories", "images", "annotations"}
    assert coco["categories"][0] == {"id": 0, "name": "shapes", "supercategory": "none"}  # the superclass
    assert {c["supercategory"] for c in coco["categories"][1:]} == {"shapes"}
    plain = build("coco", tmp_path)
    assert {p.name for p in (plain / "annotations").iterdir()} == {
        "instances_train2017.json",
        "instances_val2017.json",
    }
    assert len(list((plain / "val2017").glob("*.jpg"))) == 4
    llava = json.loads((build("llava", tmp_path) / "train.json").read_text())
    assert set(llava[0]) == {"id", "image", "conversations"}
    assert llava[0]["conversations"][0]["value"].startswith("<image>\n")
    assert [turn["from"] for turn in llava[0]["conversations"]] == ["human", "gpt"] * 3


def test_dataset_format_choices_are_the_registered_formats() -> None:
    assert set(DATASET_FORMATS) == {"auto", "datasets", *FORMATS}


# --- Each format read into the existing tasks ------------------------------------------------------------


def test_maestro_text_rows_are_vqa_with_the_prefix_as_prompt(tmp_path: Path) -> None:
    source, train, evaluation, counts = loaded(build("maestro", tmp_path), tmp_path)
    assert (source.format, source.task.name) == ("maestro", "vqa")
    assert len(train) == 8 * 3 and len(evaluation) == 4 * 3  # `valid/` is the eval split
    first = train[0]
    assert first["id"] == "train/annotations.jsonl:1" and first["prompt"] == "What colour is the background?"
    assert first["target"] == first["answers"][0] and first["image"].size == (128, 128)
    assert counts["train_skipped_missing_images"] == 0 and counts["eval_skipped_zero_area_boxes"] == 0


def test_maestro_od_rows_are_detection_with_the_same_location_tokens(tmp_path: Path) -> None:
    folder = build("maestro-detection", tmp_path)
    source, train, _, _ = loaded(folder, tmp_path)
    assert source.task.name == "detection" and train[0]["prompt"] == "<OD>"
    written = [
        json.loads(line)["suffix"]
        for line in (folder / "train" / "annotations.jsonl").read_text().splitlines()
    ]
    for suffix, target in zip(written, train["target"], strict=True):
        objects = lambda text: sorted(re.findall(r"([a-z]+)((?:<loc_\d+>){4})", text))  # noqa: E731
        assert objects(target) == objects(suffix.replace("<loc_1000>", "<loc_999>"))  # reordered, never moved


@pytest.mark.parametrize("kind", ["roboflow-coco", "coco"])
def test_coco_boxes_become_detection_targets_with_counted_skips(kind: str, tmp_path: Path) -> None:
    source, train, evaluation, counts = loaded(build(kind, tmp_path), tmp_path)
    assert (source.format, source.task.name) == ("coco", "detection")
    assert len(train) == 8 and len(evaluation) == 4
    labels = set(re.findall(r"([a-z]+)<loc_", "".join(train["target"])))
    assert labels <= {"rectangle", "circle", "triangle"}  # category names; Roboflow's superclass is no label
    # The builder's one crowd, one zero-area and one out-of-image box on the first train image.
    assert counts["train_skipped_crowd_boxes"] == counts["train_skipped_zero_area_boxes"] == 1
    assert counts["train_clipped_boxes"] == 1 and counts["eval_clipped_boxes"] == 0
    assert train[0]["target"].count("<loc_999>") >= 1  # the clipped box ends at the right edge


def test_llava_turns_are_vqa_rows_without_the_image_placeholder(tmp_path: Path) -> None:
    source, train, evaluation, _ = loaded(build("llava", tmp_path), tmp_path)
    assert (source.format, source.task.name) == ("llava", "vqa")
    assert len(train) == 8 * 3 and len(evaluation) == 4 * 3
    assert (
        train[0]["prompt"] == "What colour is the background?"
        and train[0]["id"] == "train.json record 0 turn 1"
    )
    assert not any("<image>" in prompt for prompt in train["prompt"])


def test_one_llava_file_serves_sliced_splits(tmp_path: Path) -> None:
    file = build("llava", tmp_path) / "train.json"
    _, train, evaluation, _ = loaded(
        file, tmp_path, "--train_split", "train[:75%]", "--eval_split", "train[75%:]"
    )
    assert len(train) == 18 and len(evaluation) == 6 and not set(train["id"]) & set(evaluation["id"])


def test_llava_jsonl_counts_turns_it_cannot_use(tmp_path: Path) -> None:
    folder = build("llava", tmp_path)
    record = json.loads((folder / "train.json").read_text())[0]
    record["conversations"] = [{"from": "system", "value": "Be brief."}, *record["conversations"][:3]]
    rows = [record, {"id": "text-only", "conversations": record["conversations"]}]
    (folder / "chat.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    part = read_format_split("llava", str(folder / "chat.jsonl"), "train", False)
    assert [row["id"] for row in part.rows] == ["chat.jsonl line 1 turn 1"]
    assert part.counts["skipped_system_turns"] == 2 and part.counts["skipped_unanswered_turns"] == 2
    assert part.counts["skipped_rows_without_image"] == 1


# --- The format decides the task ---------------------------------------------------------------------------


def test_a_task_typed_on_the_command_line_must_match_the_format(tmp_path: Path) -> None:
    coco = build("roboflow-coco", tmp_path)
    with pytest.raises(RecipeError, match=r"--task vqa: .* coco layout, which is read as task detection"):
        data_sources(*args_for(coco, tmp_path, "--task", "vqa"))
    assert data_sources(*args_for(coco, tmp_path, "--task", "detection"))[0].task.name == "detection"


def test_unknown_layout_fails_with_one_line_listing_the_recognised_ones(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"")
    with pytest.raises(RecipeError) as caught:
        data_sources(*args_for(folder, tmp_path))
    message = str(caught.value)
    assert "\n" not in message and "unrecognised dataset layout" in message
    assert all(f"{name}: " in message for name in ("maestro", "coco", "llava", "datasets"))
    with pytest.raises(RecipeError, match=r"dataset_format coco: .* is not in that layout"):
        data_sources(*args_for(build("maestro", tmp_path), tmp_path, "--dataset_format", "coco"))


# --- Bad inputs name the file and line (or image id) -------------------------------------------------------


def _edit_lines(path: Path, edit: Any) -> None:
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")


def _read(folder: Path, name: str = "maestro", split: str = "train", skip: bool = False) -> Any:
    return read_format_split(name, str(folder), split, skip)


def test_maestro_bad_lines_are_named(tmp_path: Path) -> None:
    folder = build("maestro", tmp_path)
    annotations = folder / "train" / "annotations.jsonl"
    _edit_lines(annotations, lambda lines: [lines[0], '{"image": "x.jpg", "prefix": "Q"', *lines[2:]])
    with pytest.raises(RecipeError, match=r"^train/annotations.jsonl line 2: not valid JSON"):
        _read(folder)
    _edit_lines(annotations, lambda lines: [lines[0], '{"image": "x.jpg", "prefix": "Q"}', *lines[2:]])
    with pytest.raises(RecipeError, match=r"^train/annotations.jsonl line 2: suffix missing"):
        _read(folder)


def test_missing_image_fails_or_is_skipped_and_counted(tmp_path: Path) -> None:
    folder = build("maestro", tmp_path)
    first_image = json.loads((folder / "valid" / "annotations.jsonl").read_text().splitlines()[0])["image"]
    (folder / "valid" / first_image).unlink()
    with pytest.raises(
        RecipeError, match=r"^valid/annotations.jsonl line 1: image file not found: .*on_bad_sample"
    ):
        _read(folder, split="validation")
    part = _read(folder, split="validation", skip=True)
    assert part.counts["skipped_missing_images"] == 3 and len(part.rows) == 4 * 3 - 3  # its three questions


def test_maestro_detection_bad_boxes(tmp_path: Path) -> None:
    folder = build("maestro-detection", tmp_path)
    annotations = folder / "train" / "annotations.jsonl"
    row = json.loads(annotations.read_text().splitlines()[0])
    zero = {**row, "suffix": "circle<loc_10><loc_10><loc_10><loc_50>" + row["suffix"]}
    _edit_lines(annotations, lambda lines: [json.dumps(zero), *lines[1:]])
    assert _read(folder).counts["skipped_zero_area_boxes"] == 1
    read_format_split.cache_clear()
    for suffix, error in (
        ("circle<loc_50><loc_10><loc_20><loc_50>", "x1 < x0"),
        ("circle<loc_5><loc_10>", "needs a suffix of label<loc_x0>"),
    ):
        _edit_lines(annotations, lambda lines, s=suffix: [json.dumps({**row, "suffix": s}), *lines[1:]])
        with pytest.raises(RecipeError, match=rf"^train/annotations.jsonl line 1: .*{re.escape(error)}"):
            _read(folder)
    _edit_lines(annotations, lambda lines: [json.dumps({**row, "prefix": "<CAPTION>"}), *lines[1:]])
    with pytest.raises(RecipeError, match=r"mixes <OD> detection rows \(line 2\) with text rows \(line 1\)"):
        _read(folder)


def _coco_file(folder: Path) -> tuple[Path, dict[str, Any]]:
    path = folder / "train" / "_annotations.coco.json"
    return path, json.loads(path.read_text())


def test_coco_bad_annotations_are_named(tmp_path: Path) -> None:
    folder = build("roboflow-coco", tmp_path)
    path, coco = _coco_file(folder)
    annotation = coco["annotations"][1]
    where = rf"^train/_annotations.coco.json annotation 1 \(image {annotation['image_id']}\)"
    for change, error in (
        ({"category_id": 9}, r"unknown category_id 9 \(categories: 0, 1, 2, 3\)"),
        ({"bbox": [40, 40, -5, 10]}, r"negative width or height \(x1 < x0"),
    ):
        path.write_text(
            json.dumps({**coco, "annotations": [*coco["annotations"][:1], {**annotation, **change}]})
        )
        with pytest.raises(RecipeError, match=f"{where}: {error}"):
            _read(folder, "coco")
    path.write_text(json.dumps(coco))
    (path.parent / coco["images"][2]["file_name"]).unlink()
    with pytest.raises(RecipeError, match=r"^train/_annotations.coco.json image 2: image file not found"):
        _read(folder, "coco")


# --- End to end: the done-when command on each layout, no column mapping ----------------------------------


def _end_to_end(kind: str, tmp_path: Path, tiny_model_dir: Path) -> dict[str, Any]:
    """The smoke YAML as shipped (task: vqa) but for the model and output folders, on `kind`'s folder."""
    config = yaml.safe_load(SMOKE.read_text()) | {"model_name_or_path": str(tiny_model_dir)}
    path = tmp_path / SMOKE.name
    path.write_text(yaml.safe_dump(config | {"output_dir": str(tmp_path / "out")}))
    return run("custom.py", path, "--dataset_name", str(build(kind, tmp_path)))


@pytest.mark.parametrize("kind", ["maestro", "roboflow-coco", "llava"])
def test_each_layout_trains_and_evaluates_through_custom_py(
    kind: str, tmp_path: Path, tiny_model_dir: Path
) -> None:
    results = _end_to_end(kind, tmp_path, tiny_model_dir)
    if kind == "roboflow-coco":
        assert results["eval_count"] == 4 and results["train_samples"] == 8
        assert all(0.0 <= results[f"eval_{key}"] <= 1.0 for key in ("map", "map_50", "mar_100"))
        assert results["train_skipped_crowd_boxes"] == results["train_clipped_boxes"] == 1
    else:
        assert results["eval_count"] == 12 and results["train_samples"] == 24
        assert 0.0 <= results["eval_anls"] <= 1.0 and "eval_levenshtein" in results
        assert results["eval_skipped_missing_images"] == 0
    marker = json.loads((tmp_path / kind / ".florence_recipes_build.json").read_text())
    assert (
        marker["builder"].startswith("write_") and marker["builder"] != "write_synthetic_vqa_jsonl"
    )  # not rebuilt


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["maestro-detection", "coco"])
def test_other_layouts_train_and_evaluate_through_custom_py(
    kind: str, tmp_path: Path, tiny_model_dir: Path
) -> None:
    results = _end_to_end(kind, tmp_path, tiny_model_dir)
    assert results["eval_count"] == 4 and 0.0 <= results["eval_map"] <= 1.0
