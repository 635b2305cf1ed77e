"""The synthetic visual-QA set (answers only in the pixels), its image-blind baseline and controls, and the
default-suite check that training learns from the pixels: held-out ANLS clearly above the image-blind
control, with `group_by_image` + `dedup_vision`, so a bug that pairs image features with the wrong question
turns it red."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from conftest import REPO_ROOT, run_recipe_subprocess
from PIL import Image

from florence_recipes.builders import build_offline_fixtures
from florence_recipes.builders.visual_qa import (
    COLOURS,
    DEFAULT_QUESTIONS,
    POSITIONS,
    QUESTIONS,
    dataset_image_blind_baseline,
    dataset_most_frequent_answer_baseline,
    image_blind_baseline,
    most_frequent_answer_baseline,
    write_synthetic_visual_qa,
)
from florence_recipes.data.loading import load_task_split
from florence_recipes.data.tasks import get_task

SMALL = {"num_train_images": 12, "num_validation_images": 6, "num_test_images": 3, "seed": 5}
LEARN_YAML = REPO_ROOT / "recipes" / "docvqa" / "learn_tiny.yaml"


def rows(folder: Path, split: str) -> list[dict]:
    return list(load_task_split(get_task("docvqa"), str(folder), split))  # images decoded


def image_digest(image: Image.Image) -> str:
    return hashlib.sha256(image.convert("RGB").tobytes()).hexdigest()


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_visual_qa(tmp_path_factory.mktemp("vqa") / "visual-qa", **SMALL)


def test_docvqa_task_reads_three_questions_per_image(small_dir: Path) -> None:
    train = rows(small_dir, "train")
    assert len(train) == 3 * SMALL["num_train_images"]
    by_image: dict[str, list[dict]] = {}
    for row in train:
        by_image.setdefault(row["image_id"], []).append(row)
    assert len(by_image) == SMALL["num_train_images"]
    for questions in by_image.values():
        assert [row["tags"] for row in questions] == [[kind] for kind in DEFAULT_QUESTIONS]
        assert [row["prompt"] for row in questions] == [f"<DocVQA>{QUESTIONS[q]}" for q in DEFAULT_QUESTIONS]
        # One image, different answers: the question decides which attribute is read.
        assert len({row["target"] for row in questions}) == 3
    test = load_task_split(get_task("docvqa"), str(small_dir), "validation")
    assert len(test) == 3 * SMALL["num_validation_images"]


def test_answers_are_drawn_and_splits_share_no_image(small_dir: Path) -> None:
    digests: dict[str, set[str]] = {}
    for split in ("train", "validation"):
        split_rows = rows(small_dir, split)
        digests[split] = {image_digest(row["image"]) for row in split_rows}
        for background_row, colour_row, position_row in zip(*[iter(split_rows)] * 3, strict=True):
            image = background_row["image"].convert("RGB")
            background, colour = COLOURS[background_row["target"]], COLOURS[colour_row["target"]]
            pixels = {(x, y): image.getpixel((x, y)) for x in range(image.width) for y in range(image.height)}
            # Exactly the two answered colours (PIL draws without anti-aliasing), the background the majority.
            assert background != colour and set(pixels.values()) == {background, colour}
            shape = [xy for xy, value in pixels.items() if value == colour]
            assert len(shape) < len(pixels) / 2
            # The whole shape lies in the half that the position answer names.
            halves = {POSITIONS[int(2 * x / image.width)] for x, _ in shape}
            assert halves == {position_row["target"]}
    assert len(digests["train"]) == SMALL["num_train_images"]
    assert not digests["train"] & digests["validation"]


def test_deterministic_for_a_seed_and_fresh_with_another(small_dir: Path, tmp_path: Path) -> None:
    again = write_synthetic_visual_qa(tmp_path / "again", **SMALL)
    for split in ("train", "validation", "test"):
        name = f"data/{split}-00000-of-00001.parquet"
        assert (again / name).read_bytes() == (small_dir / name).read_bytes()
    # A fresh held-out split: one call, another seed, no training images.
    heldout = write_synthetic_visual_qa(
        tmp_path / "heldout", num_train_images=0, num_validation_images=6, seed=SMALL["seed"] + 1
    )
    assert not (heldout / "data" / "train-00000-of-00001.parquet").exists()
    fresh = {image_digest(row["image"]) for row in rows(heldout, "validation")}
    assert len(fresh) == 6
    assert not fresh & {image_digest(row["image"]) for row in rows(small_dir, "validation")}


def test_test_split_hides_annotations(small_dir: Path) -> None:
    from datasets import Dataset

    test = Dataset.from_parquet(str(small_dir / "data" / "test-00000-of-00001.parquet"))
    assert len(test) == 3 * SMALL["num_test_images"]
    assert set(test["answers"]) == {None} and set(test["question_types"]) == {None}


def test_blank_and_shuffled_controls(small_dir: Path, tmp_path: Path) -> None:
    real = {split: rows(small_dir, split) for split in ("train", "validation")}
    blank = write_synthetic_visual_qa(tmp_path / "visual-qa-blank", **SMALL, control="blank")
    shuffled = write_synthetic_visual_qa(tmp_path / "visual-qa-shuffled", **SMALL, control="shuffled")
    for split in ("train", "validation"):
        blank_rows = rows(blank, split)
        assert len({image_digest(row["image"]) for row in blank_rows}) == 1
        # Same questions and answers as the real set: only the pixels change.
        assert [(r["prompt"], r["answers"]) for r in blank_rows] == [
            (r["prompt"], r["answers"]) for r in real[split]
        ]
    shuffled_train = rows(shuffled, "train")
    real_train = [image_digest(row["image"]) for row in real["train"]]
    moved = [image_digest(row["image"]) for row in shuffled_train]
    assert sorted(moved) == sorted(real_train) and moved != real_train  # same images, other questions
    assert [image_digest(r["image"]) for r in rows(shuffled, "validation")] == [
        image_digest(r["image"]) for r in real["validation"]
    ]


def test_image_blind_baseline_is_the_best_single_answer_per_question() -> None:
    questions = ["colour?", "colour?", "colour?", "shape?", "shape?", "shape?"]
    answers = [["red"], ["blue"], ["blue"], ["circle", "ring"], ["ring"], ["square"]]
    # colour: "blue" scores 2 of 3; shape: "ring" matches a gold answer of 2 items ("circle" only 1).
    assert image_blind_baseline(questions, answers) == pytest.approx(4 / 6)
    # ANLS partial credit counts: "blues" is one edit from "blue" (similarity 0.8), so it can win.
    assert image_blind_baseline(["c?", "c?"], [["blue"], ["blues"]]) == pytest.approx((1 + 0.8) / 2)


def test_most_frequent_answer_baseline_answers_the_training_prior() -> None:
    train_q = ["colour?", "colour?", "colour?", "shape?", "shape?"]
    train_a = [["red"], ["blue"], ["blue"], ["ring", "circle"], ["square"]]  # trained on the first gold
    questions = ["colour?", "colour?", "shape?", "shape?", "size?"]
    answers = [["blue"], ["red"], ["circle"], ["ring"], ["big"]]
    # colour -> "blue" (1 of 2); shape -> "ring" (first of the tie in training order: 1 of 2); size: unseen -> "".
    assert most_frequent_answer_baseline(train_q, train_a, questions, answers) == pytest.approx(2 / 5)
    # The prior can sit below the best single answer on the held-out split: that one is the ceiling.
    assert image_blind_baseline(questions, answers) == pytest.approx(3 / 5)


def test_dataset_baseline_is_near_chance(small_dir: Path, tmp_path: Path) -> None:
    folder = write_synthetic_visual_qa(
        tmp_path / "visual-qa", num_train_images=300, num_validation_images=300
    )
    baseline = dataset_image_blind_baseline(folder)
    prior = dataset_most_frequent_answer_baseline(folder)
    # Chance with 5 background colours, 5 shape colours, 2 halves drawn uniformly: (1/5 + 1/5 + 1/2) / 3 = 0.3,
    # a little more for the best single answer on a sample of 300 images; the training prior is at most that.
    assert 0.2 < prior <= baseline < 0.4


def test_last_log_line_names_both_baselines(tmp_path: Path) -> None:
    from florence_recipes.builders.visual_qa import offline_result_note

    folder = write_synthetic_visual_qa(tmp_path / "visual-qa", num_train_images=60, num_validation_images=30)
    prior, best = dataset_most_frequent_answer_baseline(folder), dataset_image_blind_baseline(folder)
    note = offline_result_note(folder, 0.9)
    assert note.startswith("held-out eval_anls 0.9000 on synthetic visual QA")
    assert f"training answer per question) {prior:.4f}" in note and f"can exceed {best:.4f}" in note


def test_offline_fixtures_build_visual_qa_and_controls_by_folder_name(tmp_path: Path) -> None:
    model = tmp_path / "tiny-florence2"
    build_offline_fixtures(str(model), str(tmp_path / "visual-qa-blank"), "docvqa")
    marker = json.loads((tmp_path / "visual-qa-blank" / ".florence_recipes_build.json").read_text())
    assert marker["builder"] == "write_synthetic_visual_qa" and marker["args"]["control"] == "blank"
    assert json.loads((model / ".florence_recipes_build.json").read_text())["size"] == "tiny"


# The regression check: the two colour questions (learned first), a short schedule, held-out images.
REGRESSION_DATA = {
    "num_train_images": 600,
    "num_validation_images": 100,
    "questions": ("background", "colour"),
}
REGRESSION_EPOCHS = "7"  # 525 steps of 16
REGRESSION_MARGIN = 0.2  # held-out ANLS must beat the image-blind baseline (~0.2) by this much


def test_training_learns_from_the_pixels_with_dedup_vision(tmp_path: Path) -> None:
    """Held-out ANLS clearly above the image-blind baseline with group_by_image + dedup_vision: if image
    features were paired with the wrong question, no answer could be read and the score would fall to it."""
    from florence_recipes.builders.model import build_random_florence2

    data = write_synthetic_visual_qa(tmp_path / "visual-qa", **REGRESSION_DATA)
    model = build_random_florence2(tmp_path / "tiny64-florence2", size="tiny64")
    output = tmp_path / "run"
    result = run_recipe_subprocess(
        "docvqa.py", "--config", str(LEARN_YAML), "--model_name_or_path", str(model),
        "--dataset_name", str(data), "--build_offline_fixtures", "false", "--output_dir", str(output),
        "--num_train_epochs", REGRESSION_EPOCHS, "--eval_strategy", "no", "--save_strategy", "no",
        "--group_by_image", "true", "--dedup_vision", "true", "--dataloader_num_workers", "0",
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    anls = json.loads((output / "all_results.json").read_text())["eval_anls"]
    baseline = dataset_image_blind_baseline(data)
    assert anls > baseline + REGRESSION_MARGIN, f"held-out ANLS {anls:.3f}, image-blind {baseline:.3f}"
