"""Boxes <-> Florence-2 `<loc_i>` tokens, and mAP of generated detections (tiny processor, no training)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AddedToken, AutoProcessor, EvalPrediction

from florence_recipes.data.boxes import format_detection_target, quantize_boxes
from florence_recipes.data.images import image_size
from florence_recipes.errors import RecipeError
from florence_recipes.evaluation.detection import mean_average_precision, parse_boxes
from florence_recipes.evaluation.scoring import BoxScorer

SIZES = [(256, 256), (640, 480), (333, 1000), (4000, 3000)]


def random_boxes(rng: np.random.Generator, size: tuple[int, int], count: int) -> np.ndarray:
    width, height = size
    x = np.sort(rng.uniform(0, width, (count, 2)), axis=1)
    y = np.sort(rng.uniform(0, height, (count, 2)), axis=1)
    return np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)


@pytest.mark.parametrize("size", SIZES)
def test_quantize_matches_the_processor(processor, size: tuple[int, int]) -> None:
    boxes = random_boxes(np.random.default_rng(0), size, 200)
    # Bin edges and the far image border are where an off-by-one would show.
    width, height = size
    edges = np.array([[0, 0, width, height], [width / 1000 * 7, height / 1000 * 3, width - 1, height - 1]])
    boxes = np.concatenate([boxes, edges])
    expected = processor.post_processor.quantize(torch.tensor(boxes, dtype=torch.float64), size)
    np.testing.assert_array_equal(quantize_boxes(boxes, size), expected.numpy())


@pytest.mark.parametrize("size", SIZES)
def test_box_to_loc_tokens_to_box_round_trip(processor, size: tuple[int, int]) -> None:
    boxes = random_boxes(np.random.default_rng(1), size, 50)
    labels = [f"shape {i}" for i in range(len(boxes))]
    target = format_detection_target(boxes.tolist(), labels, size, where="test")
    assert len(re.findall(r"<loc_\d+>", target)) == 4 * len(boxes)
    parsed = parse_boxes(processor, target, "<OD>", size)
    assert sorted(parsed["labels"]) == sorted(labels)
    back = np.array([parsed["bboxes"][parsed["labels"].index(label)] for label in labels], dtype=np.float64)
    per_bin = np.array([size[0], size[1], size[0], size[1]]) / 1000
    # The bin's centre is within half a bin of the original coordinate; the processor then truncates the
    # centre to an integer pixel, which costs up to one more pixel (so: within one bin once a bin is >= 2 px).
    centres = (quantize_boxes(boxes, size) + 0.5) * per_bin
    assert np.all(np.abs(centres - boxes) <= per_bin / 2 + 1e-9)
    assert np.all(np.abs(back - boxes) <= per_bin / 2 + 1)


def test_target_format_and_reading_order() -> None:
    # Given bottom-first; written top to bottom. 1000 x 500 px: one bin = 1 x 0.5 px.
    target = format_detection_target(
        [[10, 400, 20, 450], [500.5, 0, 999.9, 100.2]], ["dog", " cat "], (1000, 500), "test"
    )
    assert target == "cat<loc_500><loc_0><loc_999><loc_200>dog<loc_10><loc_800><loc_20><loc_900>"
    assert format_detection_target([], [], (10, 10), "test") == ""


@pytest.mark.parametrize(
    ("boxes", "labels", "message"),
    [
        ([[10, 10, 5, 20]], ["a"], r"x0 < x1"),  # x1 before x0
        ([[10, 10, 20, 10]], ["a"], r"x0 < x1, y0 < y1"),  # zero height
        ([[1, 2, 3]], ["a"], r"\[x0, y0, x1, y1\]"),
        ([[1, 2, "3", 4]], ["a"], r"\[x0, y0, x1, y1\]"),
        ([[1, 2, 3, 4]], [""], r"non-empty"),
        ([[1, 2, 3, 4]], ["a<b"], r"free of '<'"),
        ([[1, 2, 3, 4]], ["a", "b"], r"1 boxes but 2 labels"),
    ],
)
def test_bad_objects_name_the_sample(boxes, labels, message: str) -> None:
    with pytest.raises(RecipeError, match=rf"^shapes row-7: .*{message}"):
        format_detection_target(boxes, labels, (100, 100), "shapes row-7")


def test_map_of_ground_truth_against_itself_is_one() -> None:
    rng = np.random.default_rng(2)
    gold = [
        {"bboxes": random_boxes(rng, (640, 480), n).tolist(), "labels": list(rng.choice(["a", "b", "c"], n))}
        for n in (1, 3, 7, 2)
    ]
    assert mean_average_precision(gold, gold) == {"map": 1.0, "map_50": 1.0, "map_75": 1.0, "mar_100": 1.0}


def test_map_hand_computed() -> None:
    gold = [{"bboxes": [[0, 0, 100, 100]], "labels": ["cat"]}]
    # IoU = 62 * 100 / (100 * 100 + 100 * 100 - 62 * 100) = 0.449 -> no threshold matched.
    assert mean_average_precision([{"bboxes": [[38, 0, 138, 100]], "labels": ["cat"]}], gold)["map"] == 0.0
    # IoU = 0.62: matched at thresholds .50, .55 and .60 out of the ten .50:.05:.95 -> 0.3.
    shifted = [{"bboxes": [[0, 0, 62, 100]], "labels": ["cat"]}]
    scores = mean_average_precision(shifted, gold)
    assert scores["map"] == pytest.approx(0.3) and scores["map_50"] == 1.0 and scores["map_75"] == 0.0
    # The right box with the wrong label finds nothing.
    assert mean_average_precision([{"bboxes": [[0, 0, 100, 100]], "labels": ["dog"]}], gold)["map"] == 0.0


def test_detection_metrics_keep_loc_tokens_that_are_special(tiny_model_dir: Path) -> None:
    """Checkpoints may register <loc_i> as special tokens: `skip_special_tokens=True` would drop every box."""
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    tokenizer = processor.tokenizer
    tokenizer.add_tokens(
        [AddedToken(f"<loc_{i}>", special=True, normalized=False) for i in range(1000)], special_tokens=True
    )
    sizes = [(256, 256), (640, 480)]
    targets = [
        format_detection_target(
            [[10, 20, 100, 200], [120, 30, 250, 90]], ["circle", "square"], sizes[0], "a"
        ),
        format_detection_target([[300, 200, 600, 470]], ["triangle"], sizes[1], "b"),
    ]
    ids = tokenizer(targets, padding="longest", return_tensors="np")["input_ids"]
    assert "<loc_" not in tokenizer.decode(ids[0], skip_special_tokens=True)  # the hazard is real here
    ids = np.where(
        tokenizer(targets, padding="longest", return_tensors="np")["attention_mask"] == 1, ids, -100
    )

    metrics = BoxScorer(processor, targets, sizes, ["<OD>", "<OD>"], sources=["shapes", "more"])
    scores = metrics(EvalPrediction(predictions=ids, label_ids=ids))
    assert scores["map"] == 1.0 and scores["count"] == 2
    assert scores["shapes_map"] == 1.0 and scores["more_map_50"] == 1.0
    texts = metrics.decode(ids)
    assert texts == targets
    assert metrics.parse(1, texts[1])["labels"] == ["triangle"]

    # A prediction that misses one of the three objects: recall 2/3 at every threshold.
    ids_missing = tokenizer(
        [targets[0].split("square")[0], targets[1]], padding="longest", return_tensors="np"
    )
    scores = metrics(EvalPrediction(predictions=ids_missing["input_ids"], label_ids=ids))
    assert scores["mar_100"] == pytest.approx(2 / 3) and scores["shapes_mar_100"] == 0.5


def test_image_size_follows_exif_orientation(tmp_path: Path) -> None:
    picture = Image.new("RGB", (300, 200), "white")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", exif=exif)
    assert image_size({"bytes": buffer.getvalue(), "path": None}) == (200, 300)
    picture.save(tmp_path / "plain.png")
    assert image_size({"bytes": None, "path": str(tmp_path / "plain.png")}) == (300, 200)
