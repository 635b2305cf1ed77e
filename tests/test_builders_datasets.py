"""The offline synthetic datasets: Hub layouts and schemas as seen through ``load_dataset``, answers that are
really drawn, boxes that really enclose the shapes, idempotent and deterministic builds."""

import io
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import pytest
import yaml
from datasets import Features, Image, Value, load_dataset
from PIL import Image as PILImage
from PIL import ImageChops

from florence_recipes.builders.datasets import (
    CAULDRON_SUBSETS,
    docvqa_documents,
    write_synthetic_cauldron,
    write_synthetic_detection,
    write_synthetic_docvqa,
    write_synthetic_vqa_jsonl,
)
from florence_recipes.builders.model import BUILD_MARKER

DOCVQA_ARGS: dict[str, Any] = {
    "num_train_docs": 4,
    "num_validation_docs": 2,
    "num_test_docs": 2,
    "questions_per_doc": 3,
    "seed": 7,
}
# 5 rows reach every row kind of the pattern: single turn, two images, no image, two and three turns.
CAULDRON_ARGS: dict[str, Any] = {"rows_per_subset": 5, "seed": 7}
JSONL_ARGS: dict[str, Any] = {"num_train": 6, "num_validation": 3, "seed": 7}
# DocVQA's question_types vocabulary.
DOCVQA_QUESTION_TYPES = {
    "handwritten",
    "form",
    "table/list",
    "layout",
    "free_text",
    "Image/Photo",
    "figure/diagram",
    "Yes/No",
    "others",
}


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # datasets reads the variable once at import time.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def docvqa_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_docvqa(tmp_path_factory.mktemp("docvqa") / "DocumentVQA", **DOCVQA_ARGS)


@pytest.fixture(scope="module")
def cauldron_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_cauldron(tmp_path_factory.mktemp("cauldron") / "the_cauldron", **CAULDRON_ARGS)


def _files(folder: Path) -> dict[str, Path]:
    return {path.relative_to(folder).as_posix(): path for path in sorted(folder.rglob("*")) if path.is_file()}


# --- DocVQA -------------------------------------------------------------------------------------------


def test_docvqa_layout_splits_and_features(docvqa_dir: Path, tmp_path: Path) -> None:
    assert set(_files(docvqa_dir)) == {
        "README.md",
        BUILD_MARKER,
        "data/train-00000-of-00001.parquet",
        "data/validation-00000-of-00001.parquet",
        "data/test-00000-of-00001.parquet",
    }
    dataset = load_dataset(str(docvqa_dir), cache_dir=str(tmp_path / "cache"))
    assert dict(dataset.num_rows) == {"train": 12, "validation": 6, "test": 6}  # documents x 3 questions
    expected = Features(
        {
            "questionId": Value("int32"),
            "question": Value("string"),
            "question_types": [Value("string")],
            "image": Image(),
            "docId": Value("int32"),
            "ucsf_document_id": Value("string"),
            "ucsf_document_page_no": Value("string"),
            "answers": [Value("string")],
        }
    )
    for split in dataset.values():
        assert split.features == expected
        assert list(split.features) == list(expected)  # column order too
    image = dataset["train"][0]["image"]
    assert isinstance(image, PILImage.Image)
    assert image.size == (384, 512)
    question_ids = [row for split in dataset.values() for row in split["questionId"]]
    assert len(set(question_ids)) == len(question_ids)


def test_docvqa_questions_share_documents_and_answers_are_drawn(docvqa_dir: Path, tmp_path: Path) -> None:
    dataset = load_dataset(str(docvqa_dir), cache_dir=str(tmp_path / "cache"))
    for split_name in ("train", "validation"):
        split = dataset[split_name].cast_column("image", Image(decode=False))
        doc_ids = list(dict.fromkeys(split["docId"]))
        documents = docvqa_documents(split_name, len(doc_ids), seed=DOCVQA_ARGS["seed"])
        drawn = {
            doc_id: {field.value for field in doc.fields}
            for doc_id, doc in zip(doc_ids, documents, strict=True)
        }
        by_doc: dict[int, list[dict[str, Any]]] = {}
        for row in split:
            by_doc.setdefault(row["docId"], []).append(row)
            assert row["answers"][0] in drawn[row["docId"]]
            assert row["question"].endswith("?")
            assert row["question_types"]
            assert set(row["question_types"]) <= DOCVQA_QUESTION_TYPES
        for rows in by_doc.values():
            assert len(rows) == 3
            assert len({row["image"]["bytes"] for row in rows}) == 1
            assert len({(row["ucsf_document_id"], row["ucsf_document_page_no"]) for row in rows}) == 1
    # Some questions accept several spellings, e.g. "$45.20" and "45.20" or "12/03/1998" and "12 March 1998".
    answers = list(dataset["train"]["answers"]) + list(dataset["validation"]["answers"])
    alternatives = [golds for golds in answers if len(golds) > 1]
    assert alternatives
    for golds in alternatives:
        first, second = golds
        money = first.startswith("$") and second == first[1:]
        date = re.fullmatch(r"\d\d/\d\d/\d{4}", first) and re.fullmatch(r"\d{1,2} [A-Z][a-z]+ \d{4}", second)
        assert money or date, golds


def test_docvqa_test_split_hides_annotations(docvqa_dir: Path, tmp_path: Path) -> None:
    test = load_dataset(str(docvqa_dir), split="test", cache_dir=str(tmp_path / "cache"))
    assert list(test["answers"]) == [None] * test.num_rows
    assert list(test["question_types"]) == [None] * test.num_rows
    assert all(question for question in test["question"])


def test_docvqa_card_declares_splits(docvqa_dir: Path) -> None:
    header = yaml.safe_load((docvqa_dir / "README.md").read_text().split("---")[1])
    assert header["configs"] == [
        {
            "config_name": "default",
            "data_files": [
                {"split": "train", "path": "data/train-*"},
                {"split": "validation", "path": "data/validation-*"},
                {"split": "test", "path": "data/test-*"},
            ],
        }
    ]
    counts = {split["name"]: split["num_examples"] for split in header["dataset_info"]["splits"]}
    assert counts == {"train": 12, "validation": 6, "test": 6}


def test_docvqa_skips_empty_splits(tmp_path: Path) -> None:
    folder = write_synthetic_docvqa(tmp_path / "ds", num_train_docs=1, num_validation_docs=0, num_test_docs=0)
    assert set(load_dataset(str(folder), cache_dir=str(tmp_path / "cache"))) == {"train"}


# --- The Cauldron -------------------------------------------------------------------------------------


def test_cauldron_layout_and_card(cauldron_dir: Path) -> None:
    expected = {f"{subset}/train-00000-of-00001.parquet" for subset in CAULDRON_SUBSETS}
    assert set(_files(cauldron_dir)) == expected | {"README.md", BUILD_MARKER}
    header = yaml.safe_load((cauldron_dir / "README.md").read_text().split("---")[1])
    assert [config["config_name"] for config in header["configs"]] == list(CAULDRON_SUBSETS)
    assert header["configs"][0]["data_files"] == [
        {"split": "train", "path": f"{CAULDRON_SUBSETS[0]}/train-*"}
    ]


@pytest.mark.parametrize("subset", CAULDRON_SUBSETS)
def test_cauldron_config_loads_by_name(cauldron_dir: Path, tmp_path: Path, subset: str) -> None:
    rows = load_dataset(str(cauldron_dir), subset, split="train", cache_dir=str(tmp_path / "cache"))
    assert rows.num_rows == CAULDRON_ARGS["rows_per_subset"]
    assert rows.features == Features(
        {
            "images": [Image()],
            "texts": [{"user": Value("string"), "assistant": Value("string"), "source": Value("string")}],
        }
    )
    image_counts = [len(images) for images in rows["images"]]
    turn_counts = [len(texts) for texts in rows["texts"]]
    assert 0 in image_counts and max(image_counts) >= 2 and 1 in image_counts
    assert max(turn_counts) == 3 and 1 in turn_counts
    source = {"docvqa": "DocVQA", "chartqa": "ChartQA", "ai2d": "AI2D", "infographic_vqa": "InfographicVQA"}[
        subset
    ]
    for row in rows:
        assert all(isinstance(image, PILImage.Image) for image in row["images"])
        for turn in row["texts"]:
            assert turn["source"] == source
            assert turn["user"] and turn["assistant"]
            if subset == "ai2d":
                assert "Question: " in turn["user"]
                assert "\nChoices:\nA. " in turn["user"]
                assert turn["user"].endswith("\nAnswer with the letter.")
                assert re.fullmatch(r"Answer: [ABCD]", turn["assistant"])
    if subset == "chartqa":
        assert any(turn["assistant"].isdigit() for texts in rows["texts"] for turn in texts)


def test_cauldron_text_only_rows_carry_the_context(cauldron_dir: Path, tmp_path: Path) -> None:
    rows = load_dataset(str(cauldron_dir), "chartqa", split="train", cache_dir=str(tmp_path / "cache"))
    text_only = [texts for images, texts in zip(rows["images"], rows["texts"], strict=True) if not images]
    assert text_only
    for texts in text_only:
        context, _, question = texts[0]["user"].partition("\n\n")
        assert context and question.endswith("?")


def test_cauldron_rejects_unknown_subsets(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported subsets"):
        write_synthetic_cauldron(tmp_path / "c", subsets=("vqarad",))


# --- JSONL: VQA and detection -------------------------------------------------------------------------


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_vqa_jsonl(tmp_path: Path) -> None:
    folder = write_synthetic_vqa_jsonl(tmp_path / "vqa", **JSONL_ARGS)
    for split, count in (("train", 6), ("validation", 3)):
        lines = _read_jsonl(folder / f"{split}.jsonl")
        assert len(lines) == count
        assert len({line["id"] for line in lines}) == count
        for line in lines:
            assert set(line) == {"id", "image", "question", "answers"}
            assert line["image"].startswith("images/") and line["image"].endswith(".png")
            with PILImage.open(folder / line["image"]) as image:
                assert image.format == "PNG" and image.size == (384, 512)
            assert line["question"].endswith("?")
            assert line["answers"] and all(isinstance(answer, str) and answer for answer in line["answers"])
    assert len(list((folder / "images").glob("*.png"))) == 9


def test_detection_boxes_are_tight_and_cover_all_drawing(tmp_path: Path) -> None:
    folder = write_synthetic_detection(tmp_path / "det", image_size=(160, 128), **JSONL_ARGS)
    num_objects = 0
    for split in ("train", "validation"):
        for line in _read_jsonl(folder / f"{split}.jsonl"):
            assert set(line) == {"id", "image", "objects"}
            image = PILImage.open(folder / line["image"]).convert("RGB")
            assert image.size == (160, 128)
            background = PILImage.new("RGB", image.size, image.getpixel((0, 0)))
            assert line["objects"]
            painted_out = image.copy()
            for obj in line["objects"]:
                assert obj["label"] in {"rectangle", "circle", "triangle"}
                x0, y0, x1, y1 = obj["bbox"]
                assert all(isinstance(value, int) for value in obj["bbox"])
                assert 0 <= x0 < x1 <= image.width and 0 <= y0 < y1 <= image.height
                crop = image.crop((x0, y0, x1, y1))
                # Coloured pixels touch all four sides of the box: it encloses the shape and is tight.
                changed = ImageChops.difference(crop, background.crop((x0, y0, x1, y1))).getbbox()
                assert changed == (0, 0, x1 - x0, y1 - y0)
                painted_out.paste(background.getpixel((0, 0)), (x0, y0, x1, y1))
                num_objects += 1
            # Nothing was drawn outside the boxes.
            assert ImageChops.difference(painted_out, background).getbbox() is None
    assert num_objects > 9


# --- Idempotence and determinism ----------------------------------------------------------------------

Writer = Callable[..., Path]
WRITERS: list[tuple[Writer, dict[str, Any]]] = [
    (write_synthetic_docvqa, {**DOCVQA_ARGS, "image_size": (192, 256)}),
    (write_synthetic_cauldron, {**CAULDRON_ARGS, "subsets": ("ai2d", "chartqa"), "image_size": (192, 256)}),
    (write_synthetic_vqa_jsonl, {**JSONL_ARGS, "image_size": (192, 256)}),
    (write_synthetic_detection, JSONL_ARGS),
]
WRITER_IDS = [writer.__name__ for writer, _ in WRITERS]


def _stamps(folder: Path) -> dict[str, tuple[int, int]]:
    return {name: (path.stat().st_ino, path.stat().st_mtime_ns) for name, path in _files(folder).items()}


@pytest.mark.parametrize(("writer", "kwargs"), WRITERS, ids=WRITER_IDS)
def test_second_call_does_not_rewrite(tmp_path: Path, writer: Writer, kwargs: dict[str, Any]) -> None:
    folder = writer(tmp_path / "nested" / "out", **kwargs)
    assert folder == tmp_path / "nested" / "out"
    marker = json.loads((folder / BUILD_MARKER).read_text())
    assert marker["builder"] == writer.__name__
    before = _stamps(folder)
    assert writer(str(folder), **kwargs) == folder
    assert _stamps(folder) == before
    assert not [path.name for path in folder.parent.iterdir() if path.name != "out"]  # no staging left over


@pytest.mark.parametrize(("writer", "kwargs"), WRITERS, ids=WRITER_IDS)
def test_same_seed_same_bytes(tmp_path: Path, writer: Writer, kwargs: dict[str, Any]) -> None:
    first = {name: path.read_bytes() for name, path in _files(writer(tmp_path / "a", **kwargs)).items()}
    second = {name: path.read_bytes() for name, path in _files(writer(tmp_path / "b", **kwargs)).items()}
    assert first == second
    other = {
        name: path.read_bytes()
        for name, path in _files(writer(tmp_path / "c", **{**kwargs, "seed": 8})).items()
    }
    changed = [name for name in first if name != BUILD_MARKER and first[name] != other.get(name)]
    assert changed


def test_partial_folder_is_rebuilt(tmp_path: Path) -> None:
    folder = write_synthetic_vqa_jsonl(tmp_path / "vqa", **JSONL_ARGS)
    expected = {name: path.read_bytes() for name, path in _files(folder).items()}
    # An interrupted build: no marker, a missing image, a truncated JSONL.
    (folder / BUILD_MARKER).unlink()
    (folder / "images" / "train-00000.png").unlink()
    (folder / "train.jsonl").write_text("{")
    write_synthetic_vqa_jsonl(folder, **JSONL_ARGS)
    assert {name: path.read_bytes() for name, path in _files(folder).items()} == expected


def test_changed_arguments_rebuild_and_keep_foreign_files(tmp_path: Path) -> None:
    folder = write_synthetic_cauldron(tmp_path / "c", subsets=("ai2d", "chartqa"), rows_per_subset=2)
    (folder / "notes.txt").write_text("mine")
    write_synthetic_cauldron(folder, subsets=("ai2d",), rows_per_subset=2)
    assert not (folder / "chartqa").exists()  # the old build's subset is gone
    assert (folder / "ai2d" / "train-00000-of-00001.parquet").is_file()
    assert (folder / "notes.txt").read_text() == "mine"
    assert json.loads((folder / BUILD_MARKER).read_text())["args"]["subsets"] == ["ai2d"]


def test_docvqa_images_are_pngs_of_the_requested_size(tmp_path: Path) -> None:
    folder = write_synthetic_docvqa(
        tmp_path / "d", num_train_docs=1, num_validation_docs=0, num_test_docs=0, image_size=(300, 400)
    )
    rows = load_dataset(str(folder), split="train", cache_dir=str(tmp_path / "cache")).cast_column(
        "image", Image(decode=False)
    )
    with PILImage.open(io.BytesIO(rows[0]["image"]["bytes"])) as image:
        assert image.format == "PNG" and image.size == (300, 400)


def test_offline_fixtures_never_overwrite_a_users_folder(tmp_path: Path) -> None:
    from florence_recipes.builders import build_offline_fixtures

    model_dir, data_dir = tmp_path / "my-trained-model", tmp_path / "my-data"
    for folder in (model_dir, data_dir):
        folder.mkdir()
        (folder / "config.json").write_text("mine")
    build_offline_fixtures(str(model_dir), str(data_dir), "docvqa")
    for folder in (model_dir, data_dir):
        assert [p.name for p in folder.iterdir()] == ["config.json"]
        assert (folder / "config.json").read_text() == "mine"
    # A missing folder is built.
    build_offline_fixtures(str(tmp_path / "new-model"), str(tmp_path / "new-data"), "docvqa")
    assert (tmp_path / "new-model" / "model.safetensors").is_file()
    assert (tmp_path / "new-data" / "data").is_dir()
