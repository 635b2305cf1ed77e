"""The task registry: every kind of source becomes the same standard rows (synthetic data, no model)."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import datasets
import pytest
from datasets import Dataset, Features, Image, Value
from PIL import Image as PILImage

from florence_recipes.builders.datasets import (
    write_synthetic_cauldron,
    write_synthetic_detection,
    write_synthetic_vqa_jsonl,
)
from florence_recipes.data.boxes import format_detection_target
from florence_recipes.data.hub_tasks import CAULDRON_FAMILIES, CAULDRON_SUBSET_METRICS, cauldron_metric_table
from florence_recipes.data.loading import ROW_FEATURES, load_task_split
from florence_recipes.data.tasks import STANDARD_COLUMNS, TASKS, get_task
from florence_recipes.errors import RecipeError
from florence_recipes.evaluation.metrics import ITEM_METRICS

# The 50 configs of HuggingFaceM4/the_cauldron.
CAULDRON_CONFIGS = [
    "ai2d", "aokvqa", "chart2text", "chartqa", "clevr", "clevr_math", "cocoqa", "datikz",
    "diagram_image_to_text", "docvqa", "dvqa", "figureqa", "finqa", "geomverse", "hateful_memes", "hitab",
    "iam", "iconqa", "infographic_vqa", "intergps", "localized_narratives", "mapqa", "mimic_cgd",
    "multihiertt", "nlvr2", "ocrvqa", "okvqa", "plotqa", "raven", "rendered_text", "robut_sqa",
    "robut_wikisql", "robut_wtq", "scienceqa", "screen2words", "spot_the_diff", "st_vqa", "tabmwp",
    "tallyqa", "tat_qa", "textcaps", "textvqa", "tqa", "vistext", "visual7w", "visualmrc", "vqarad",
    "vqav2", "vsr", "websight",
]  # fmt: skip


@pytest.fixture(scope="module")
def cauldron_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_cauldron(tmp_path_factory.mktemp("data") / "the_cauldron")


@pytest.fixture(scope="module")
def vqa_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_vqa_jsonl(
        tmp_path_factory.mktemp("data") / "my_vqa", num_train=6, num_validation=4
    )


@pytest.fixture(scope="module")
def detection_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_detection(
        tmp_path_factory.mktemp("data") / "my_boxes", num_train=4, num_validation=4
    )


def png(color: str, size: tuple[int, int] = (40, 30)) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# --- registry -------------------------------------------------------------------------------------------


def test_unknown_task_lists_the_valid_ones() -> None:
    with pytest.raises(
        RecipeError,
        match=r"^unknown task 'docqa'; valid tasks: caption, cauldron, detection, docmatix, docvqa, grounding",
    ):
        get_task("docqa")
    assert set(TASKS) == {"docvqa", "cauldron", "docmatix", "vqa", "caption", "ocr", "detection", "grounding"}
    for task in TASKS.values():  # every text task names registered metrics; box tasks are scored with mAP
        assert set(task.metrics) <= set(ITEM_METRICS) and bool(task.metrics) != bool(task.box_task)


def test_standard_features_list_the_standard_columns() -> None:
    assert tuple(ROW_FEATURES) == STANDARD_COLUMNS


def test_cauldron_metric_table_covers_all_50_subsets() -> None:
    subsets = [subset for _, _, members in CAULDRON_FAMILIES.values() for subset in members]
    assert sorted(subsets) == sorted(CAULDRON_CONFIGS) and len(subsets) == 50  # each exactly once
    assert all(set(metrics) <= set(ITEM_METRICS) for metrics in CAULDRON_SUBSET_METRICS.values())
    headline = {subset: metrics[0] for subset, metrics in CAULDRON_SUBSET_METRICS.items()}
    assert headline["docvqa"] == headline["infographic_vqa"] == "anls"
    assert headline["chartqa"] == "relaxed_accuracy"
    assert headline["ai2d"] == headline["scienceqa"] == "exact_match"
    assert headline["vqav2"] == "vqa_accuracy"
    assert headline["screen2words"] == headline["websight"] == "levenshtein"
    table = cauldron_metric_table()
    assert table.count("\n") == 1 + len(CAULDRON_FAMILIES)
    assert all(table.count(f" {subset},") + table.count(f" {subset} |") == 1 for subset in CAULDRON_CONFIGS)


def test_cauldron_subset_must_be_known() -> None:
    cauldron = get_task("cauldron")
    with pytest.raises(
        RecipeError, match=r"^task 'cauldron': unknown subset 'ai2'; valid subsets: ai2d, aokvqa"
    ):
        cauldron.metrics_for("ai2")
    with pytest.raises(RecipeError, match=r"dataset_config \(the subset\) is required"):
        cauldron.metrics_for(None)
    assert cauldron.source_name("chartqa") == "chartqa" and get_task("vqa").source_name("x") == "vqa"


# --- the Cauldron ---------------------------------------------------------------------------------------


def test_cauldron_each_turn_of_a_single_image_row_is_an_example(
    cauldron_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    raw = datasets.load_dataset(str(cauldron_dir), "chartqa", split="train")
    raw = raw.cast_column("images", [Image(decode=False)])
    expected = [
        (f"chartqa-train-{row}-{turn}", t["user"], t["assistant"])
        for row, (images, texts) in enumerate(zip(raw["images"], raw["texts"], strict=True))
        if len(images) == 1
        for turn, t in enumerate(texts)
    ]
    with caplog.at_level("INFO", logger="florence_recipes"):
        rows = load_task_split(get_task("cauldron"), str(cauldron_dir), "train", "chartqa")
    # Every 8 rows hold one without image, one with two, and six single-image rows of 1+2+3+1+2+1 turns.
    assert len(rows) == len(expected) == 2 * 10
    got = rows.select_columns(["id", "prompt", "target", "answers", "source", "tags"])
    assert [(r["id"], r["prompt"], r["target"]) for r in got] == expected
    assert all(
        r["answers"] == [r["target"]] and r["source"] == "chartqa" and r["tags"] == ["ChartQA"] for r in got
    )
    assert (
        "chartqa (train): 16 rows; 2 without image (skipped: no_image_policy=skip), 2 with several images"
        in (caplog.text)
    )


@pytest.mark.parametrize(
    ("no_image", "multi_image", "kept_rows", "two_image_size"),
    [
        ("skip", "skip", 12, None),
        ("blank", "skip", 14, None),
        ("skip", "first", 14, (384, 384)),
        ("blank", "concat", 16, (768, 384)),  # two 384 px charts side by side
    ],
)
def test_cauldron_image_policies(
    cauldron_dir: Path,
    no_image: str,
    multi_image: str,
    kept_rows: int,
    two_image_size: tuple[int, int] | None,
) -> None:
    rows = load_task_split(
        get_task("cauldron"),
        str(cauldron_dir),
        "train",
        "chartqa",
        no_image_policy=no_image,
        multi_image_policy=multi_image,
    )
    # Image identity is the content (issue 15): the two rows without an image share the one white stand-in.
    assert len(set(rows["image_id"])) == kept_rows - (1 if no_image == "blank" else 0)
    by_id = {row_id: i for i, row_id in enumerate(rows["id"])}
    # Row 1 has two images (the question is about the second), row 2 none (its text is in the prompt).
    if two_image_size is None:
        assert "chartqa-train-1-0" not in by_id
    else:
        assert rows[by_id["chartqa-train-1-0"]]["image"].size == two_image_size
    if no_image == "blank":
        blank = rows[by_id["chartqa-train-2-0"]]["image"]
        assert blank.getextrema() == ((255, 255), (255, 255), (255, 255))
    else:
        assert "chartqa-train-2-0" not in by_id


def test_streamed_row_range_gives_the_same_rows(cauldron_dir: Path) -> None:
    task = get_task("cauldron")
    plain = load_task_split(task, str(cauldron_dir), "train[4:12]", "ai2d")
    streamed = list(load_task_split(task, str(cauldron_dir), "train[4:12]", "ai2d", streaming=True))
    assert [(r["id"], r["prompt"], r["target"]) for r in streamed] == [
        (r["id"], r["prompt"], r["target"]) for r in plain.select_columns(["id", "prompt", "target"])
    ]
    assert [r["image"].size for r in streamed] == [image.size for image in plain["image"]]
    with pytest.raises(RecipeError, match=r"split 'train\[:50%\]': a streamed split has no length"):
        load_task_split(task, str(cauldron_dir), "train[:50%]", "ai2d", streaming=True)


# --- your own data --------------------------------------------------------------------------------------


def test_vqa_jsonl_folder_with_paths_relative_to_it(
    vqa_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # image paths must not depend on the working directory
    rows = load_task_split(get_task("vqa"), str(vqa_dir), "validation")
    lines = [json.loads(line) for line in (vqa_dir / "validation.jsonl").read_text().splitlines()]
    assert len(rows) == len(lines) == 4
    for row, line in zip(rows, lines, strict=True):
        assert row["id"] == line["id"] and row["source"] == "vqa"
        assert row["prompt"] == "<VQA>" + line["question"]
        assert row["answers"] == line["answers"] and row["target"] == line["answers"][0]
        assert row["image_id"] == hashlib.sha1((vqa_dir / line["image"]).read_bytes()).hexdigest()
        assert row["image"].size == PILImage.open(vqa_dir / line["image"]).size


def test_vqa_jsonl_file_with_prompt_and_answer(tmp_path: Path) -> None:
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "red.png").write_bytes(png("red"))
    rows = [
        {"image": "pics/red.png", "prompt": "What colour? ", "answer": "red"},
        {"image": str(tmp_path / "pics" / "red.png"), "prompt": "Is it blue?", "answer": "no"},
        {"image": "pics/red.png", "prompt": "Shape?", "answer": None},
        {"image": "pics/red.png", "prompt": "How many?", "answer": 3},
    ]
    data = write_jsonl(tmp_path / "mine.jsonl", rows)
    out = load_task_split(get_task("vqa"), str(data), "train")
    assert out["id"] == ["vqa-train-0", "vqa-train-1", "vqa-train-2", "vqa-train-3"]
    assert out["prompt"] == ["What colour?", "Is it blue?", "Shape?", "How many?"]  # `prompt` is used as is
    assert out["answers"] == [["red"], ["no"], [], ["3"]] and out["target"] == ["red", "no", "", "3"]
    assert out["image_id"][0] == out["image_id"][1] == hashlib.sha1(png("red")).hexdigest()
    # A single file serves any split name, so percentages carve an eval split out of it.
    assert load_task_split(get_task("vqa"), str(data), "train[2:3]")["prompt"] == ["Shape?"]
    # `answers` written as one string is one gold answer, not a list of characters.
    data = write_jsonl(
        tmp_path / "strings.jsonl", [{"image": "pics/red.png", "question": "Q", "answers": "red"}]
    )
    assert load_task_split(get_task("vqa"), str(data), "train")["answers"] == [["red"]]


def test_parquet_with_embedded_images_and_renamed_columns(tmp_path: Path) -> None:
    features = Features({"img": Image(), "query": Value("string"), "label": Value("string")})
    images = [{"bytes": png("red"), "path": "a.png"}, {"bytes": png("blue"), "path": "a.png"}]
    Dataset.from_dict(
        {"img": [images[0], images[1], images[0]], "query": ["q1", "q2", "q3"], "label": ["x", "y", "z"]},
        features=features,
    ).to_parquet(str(tmp_path / "train.parquet"))
    with pytest.raises(
        RecipeError, match=r"missing column\(s\) image, prompt or question, answers or answer"
    ):
        load_task_split(get_task("vqa"), str(tmp_path), "train")
    columns = {"image": "img", "question": "query", "answer": "label"}
    rows = load_task_split(get_task("vqa"), str(tmp_path), "train", columns=columns, source="mine")
    assert rows["prompt"] == ["<VQA>q1", "<VQA>q2", "<VQA>q3"] and rows["target"] == ["x", "y", "z"]
    assert rows["source"] == ["mine"] * 3
    # Same bytes, same picture; the repeated parquet file name does not merge different pictures.
    ids = rows["image_id"]
    assert ids[0] == ids[2] != ids[1]
    with pytest.raises(
        RecipeError, match=r"`columns` names nope, not in the dataset; found: img, query, label"
    ):
        load_task_split(get_task("vqa"), str(tmp_path), "train", columns={"question": "nope"})


def test_imagefolder_with_metadata(tmp_path: Path) -> None:
    for split, color in (("train", "red"), ("validation", "green")):
        (tmp_path / split).mkdir()
        (tmp_path / split / "0.png").write_bytes(png(color))
        write_jsonl(
            tmp_path / split / "metadata.jsonl", [{"file_name": "0.png", "caption": f"a {color} square"}]
        )
    rows = load_task_split(get_task("caption"), str(tmp_path), "validation")
    assert rows["prompt"] == ["<CAPTION>"] and rows["target"] == ["a green square"]
    assert rows[0]["image"].getpixel((0, 0)) == (0, 128, 0)


def test_ocr_with_a_per_row_prompt(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png("white"))
    data = write_jsonl(
        tmp_path / "train.jsonl",
        [
            {"image": "a.png", "text": " INVOICE 42 "},
            {"image": "a.png", "text": "x", "prompt": "<OCR_WITH_REGION>"},
        ],
    )
    rows = load_task_split(get_task("ocr"), str(data), "train")
    assert rows["prompt"] == ["<OCR>", "<OCR_WITH_REGION>"] and rows["answers"] == [["INVOICE 42"], ["x"]]


def test_detection_targets_from_pixel_boxes(detection_dir: Path) -> None:
    rows = load_task_split(get_task("detection"), str(detection_dir), "validation")
    lines = [json.loads(line) for line in (detection_dir / "validation.jsonl").read_text().splitlines()]
    for row, line in zip(rows, lines, strict=True):
        boxes, labels = [o["bbox"] for o in line["objects"]], [o["label"] for o in line["objects"]]
        expected = format_detection_target(boxes, labels, row["image"].size, "test")
        assert row["prompt"] == "<OD>" and row["target"] == expected and row["answers"] == [expected]
        assert expected.count("<loc_") == 4 * len(boxes) > 0


def test_grounding_and_columnar_objects(tmp_path: Path) -> None:
    features = Features(
        {
            "image": Image(),
            "caption": Value("string"),
            # datasets' Sequence of dicts reads back as a dict of lists (the HF detection datasets' layout).
            "objects": datasets.Sequence({"bbox": [Value("float32")], "label": Value("string")}),
        }
    )
    Dataset.from_dict(
        {
            "image": [{"bytes": png("white", (200, 100)), "path": None}],
            "caption": ["A dog next to a cat."],
            "objects": [{"bbox": [[100, 0, 200, 50], [0, 50, 100, 100]], "label": ["a cat", "A dog"]}],
        },
        features=features,
    ).to_parquet(str(tmp_path / "train.parquet"))
    rows = load_task_split(get_task("grounding"), str(tmp_path), "train")
    assert rows["prompt"] == ["<CAPTION_TO_PHRASE_GROUNDING>A dog next to a cat."]
    assert rows["target"] == [
        "a cat<loc_500><loc_0><loc_999><loc_500>A dog<loc_0><loc_500><loc_500><loc_999>"
    ]


def test_bad_box_names_the_source_and_row(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png("white"))
    data = write_jsonl(
        tmp_path / "train.jsonl",
        [{"id": "r7", "image": "a.png", "objects": [{"bbox": [5, 5, 1, 9], "label": "x"}]}],
    )
    with pytest.raises(RecipeError, match=r"detection r7: bbox must be \[x0, y0, x1, y1\] in pixels"):
        load_task_split(get_task("detection"), str(data), "train")
