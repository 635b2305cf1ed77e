"""Every kind of bad input gets a clear answer: a one-line error naming the sample, or converted / skipped
and counted under `on_bad_sample: skip`, never a traceback.

One DocVQA-layout dataset (`train.jsonl` + image files, the layout of a user's own data) holds one row per
kind. The rows go through the recipe's own loading (`data_sources` -> `load_train_dataset`) and
`check_samples`, one row at a time; then the real recipe runs on the whole set, with both policies.
"""

from __future__ import annotations

import io
import json
import logging
import struct
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import REPO_ROOT, run_recipe_subprocess
from datasets import Dataset
from PIL import Image

from florence_recipes.configs.parser import parse_recipe_args
from florence_recipes.data.images import to_rgb
from florence_recipes.data.sources import data_sources, load_train_dataset
from florence_recipes.data.validation import (
    as_text_list,
    bad_sample_metrics,
    check_samples,
    count_truncated_targets,
    image_problem,
)
from florence_recipes.errors import RecipeError

COLOR = (200, 100, 50)
LONG_ANSWER = " ".join(["forty-two"] * 40)  # ~80 tokens, over the smoke recipe's max_target_length of 32


def _encode(image: Image.Image, fmt: str = "PNG", **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _bomb_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A valid 1x1 PNG whose header claims width x height pixels: what PIL's bomb guard checks on open."""
    data = bytearray(_encode(Image.new("L", (1, 1))))
    ihdr = 8  # the IHDR chunk follows the 8-byte signature: length(4) type(4) data(13) crc(4)
    data[ihdr + 8 : ihdr + 16] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr + 4 : ihdr + 21]))
    data[ihdr + 21 : ihdr + 25] = struct.pack(">I", crc)
    return bytes(data)


def _exif_rotated_jpeg() -> bytes:
    """60x20: red left half, blue right half, tagged 'rotate 90 degrees clockwise to display'."""
    image = Image.new("RGB", (60, 20), (255, 0, 0))
    image.paste((0, 0, 255), (30, 0, 60, 20))
    exif = image.getexif()
    exif[0x0112] = 6
    return _encode(image, "JPEG", quality=95, exif=exif)


def _sixteen_bit_png() -> bytes:
    pixels = np.full((48, 64), 65535, dtype=np.uint16)
    pixels[:, 32:] = 32896  # 128 * 257: mid-grey at 16 bits
    return _encode(Image.fromarray(pixels))


def _palette_png() -> bytes:
    image = Image.new("RGB", (64, 48), COLOR).convert("P", palette=Image.Palette.ADAPTIVE)
    image.info["transparency"] = 255  # an index no pixel uses: PNG keeps a tRNS chunk, pixels stay opaque
    return _encode(image)


GOOD = _encode(Image.new("RGB", (64, 48), COLOR))
IMAGE_FILES = {
    "good.png": GOOD,
    "corrupt.png": b"this is not an image at all",
    "truncated.png": _encode(Image.effect_noise((64, 48), 64))[:300],
    "zero.png": b"",
    "one_pixel.png": _encode(Image.new("RGB", (1, 1), COLOR)),
    "bomb.png": _bomb_png(),
    "bomb_warning.png": _bomb_png(10_000, 10_000),  # 1x-2x PIL's limit: PIL itself would only warn
    "grayscale.png": _encode(Image.new("L", (64, 48), 90)),
    "rgba.png": _encode(Image.new("RGBA", (64, 48), (10, 20, 30, 0))),
    "cmyk.jpg": _encode(Image.new("RGB", (64, 48), COLOR).convert("CMYK"), "JPEG", quality=95),
    "palette.png": _palette_png(),
    "sixteen_bit.png": _sixteen_bit_png(),
    "exif.jpg": _exif_rotated_jpeg(),
}

# (kind, row fields overriding a good row, reason it is reported with, or None: kept).
CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("good", {}, None),
    ("corrupt_image", {"image": "images/corrupt.png"}, "image_unreadable"),
    ("truncated_image", {"image": "images/truncated.png"}, "image_unreadable"),
    ("zero_byte_image", {"image": "images/zero.png"}, "image_unreadable"),
    ("one_pixel_image", {"image": "images/one_pixel.png"}, "image_too_small"),
    ("decompression_bomb", {"image": "images/bomb.png"}, "image_too_large"),
    ("decompression_bomb_warning", {"image": "images/bomb_warning.png"}, "image_too_large"),
    ("missing_image_file", {"image": "images/not-there.png"}, "image_missing"),
    ("no_image", {"image": None}, "image_missing"),
    ("grayscale", {"image": "images/grayscale.png"}, None),
    ("rgba", {"image": "images/rgba.png"}, None),
    ("cmyk", {"image": "images/cmyk.jpg"}, None),
    ("palette", {"image": "images/palette.png"}, None),
    ("sixteen_bit", {"image": "images/sixteen_bit.png"}, None),
    ("exif_rotated", {"image": "images/exif.jpg"}, None),
    ("empty_question", {"question": "  "}, "empty_prompt"),
    ("missing_question", {"question": None}, "empty_prompt"),
    ("missing_answers", {"answers": None}, "missing_answer"),
    ("empty_answer_list", {"answers": []}, "missing_answer"),
    ("empty_answer", {"answers": [""]}, "missing_answer"),
    ("non_string_answer", {"answers": [7, "seven"]}, "bad_answers"),
    ("structured_answer", {"answers": [{"text": "seven"}]}, "bad_answers"),
    ("long_answer", {"answers": [LONG_ANSWER]}, None),
]
EXPECTED_COUNTS = Counter(reason for _, _, reason in CASES if reason)
KEPT = [kind for kind, _, reason in CASES if reason is None]
FIRST_BAD = next(kind for kind, _, reason in CASES if reason)


def _row(number: int, kind: str, fields: dict[str, Any]) -> dict[str, Any]:
    row = {
        "questionId": 1000 + number,
        "question": f"What is the {kind} value?",
        "question_types": ["form"],
        "image": "images/good.png",
        "docId": 10 + number,
        "answers": ["Acme Corp"],  # not number-like: see test_number_like_answers_are_flagged_not_changed
    }
    return row | fields


def write_zoo(folder: Path) -> Path:
    """`folder/train.jsonl`: one row per CASES kind; `validation.jsonl`: two good rows and a corrupt one."""
    (folder / "images").mkdir(parents=True)
    for name, data in IMAGE_FILES.items():
        (folder / "images" / name).write_bytes(data)
    train = [_row(i, kind, fields) for i, (kind, fields, _) in enumerate(CASES)]
    validation = [
        _row(100, "good", {}),
        _row(101, "good", {}),
        _row(102, "bad", {"image": "images/corrupt.png"}),
    ]
    for split, rows in (("train", train), ("validation", validation)):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def sample_id(kind: str) -> str:
    return str(1000 + [k for k, _, _ in CASES].index(kind))


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_zoo(tmp_path_factory.mktemp("zoo"))


def load_train_rows(dataset_dir: Path | str, *extra: str) -> Dataset:
    """Train rows exactly as the recipe loads them, before the check."""
    _, data_args, training_args = parse_recipe_args(
        [
            "--dataset_name",
            str(dataset_dir),
            "--output_dir",
            "unused",
            "--dataloader_num_workers",
            "0",
            *extra,
        ]
    )
    return load_train_dataset(data_sources(data_args, training_args), data_args, seed=0)


@pytest.fixture(scope="module")
def zoo_rows(zoo_dir: Path) -> Dataset:
    return load_train_rows(zoo_dir)


def one_row(rows: Dataset, kind: str) -> Dataset:
    return rows.select([list(rows["id"]).index(sample_id(kind))])


@pytest.mark.parametrize(("kind", "fields", "reason"), CASES, ids=[case[0] for case in CASES])
def test_each_bad_input_gets_its_answer(
    zoo_rows: Dataset, kind: str, fields: dict, reason: str | None
) -> None:
    row = one_row(zoo_rows, kind)
    skipped, counts = check_samples(row, "skip", where="train split of zoo")
    if reason is None:  # converted (or truncated later), never rejected
        assert len(skipped) == 1 and counts == Counter()
        assert len(check_samples(row, "raise", where="train split of zoo")[0]) == 1
        return
    assert len(skipped) == 0 and counts == Counter({reason: 1})
    with pytest.raises(RecipeError) as raised:
        check_samples(row, "raise", where="train split of zoo")
    message = str(raised.value)
    assert len(message.splitlines()) == 1
    assert f"id='{sample_id(kind)}'" in message and "source docvqa" in message and reason in message
    assert "train split of zoo" in message and "on_bad_sample: skip" in message


# Decoded as the collator gets them (datasets' Image decoding), then `to_rgb`: the pixel the model sees.
EXPECTED_PIXELS = {
    "grayscale": ((10, 10), (90, 90, 90)),
    "rgba": ((10, 10), (255, 255, 255)),  # transparent -> white, not black
    "palette": ((10, 10), COLOR),
    "sixteen_bit": ((10, 10), (255, 255, 255)),
    "cmyk": ((10, 10), COLOR),
}


@pytest.mark.parametrize("kind", sorted(EXPECTED_PIXELS))
def test_converted_modes_keep_their_pixels(zoo_rows: Dataset, kind: str) -> None:
    image = to_rgb(one_row(zoo_rows, kind)[0]["image"])
    position, expected = EXPECTED_PIXELS[kind]
    assert image.mode == "RGB" and image.size == (64, 48)
    assert np.abs(np.subtract(image.getpixel(position), expected)).max() <= 3  # JPEG (cmyk) rounding


def test_sixteen_bit_keeps_its_grey_levels(zoo_rows: Dataset) -> None:
    pixels = np.asarray(to_rgb(one_row(zoo_rows, "sixteen_bit")[0]["image"]))
    assert pixels[0, 0].tolist() == [255, 255, 255]
    assert np.abs(pixels[0, 40].astype(int) - 128).max() <= 1  # 16-bit mid-grey stays mid-grey, not white


def test_exif_rotation_is_applied(zoo_rows: Dataset) -> None:
    image = to_rgb(one_row(zoo_rows, "exif_rotated")[0]["image"])
    assert image.size == (20, 60)  # displayed upright: the 60x20 picture turned a quarter clockwise
    top, bottom = np.asarray(image)[5, 10], np.asarray(image)[55, 10]
    assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]  # the left (red) half is now on top


def test_skip_counts_every_reason_exactly(zoo_rows: Dataset) -> None:
    kept, counts = check_samples(zoo_rows, "skip", where="train split of zoo")
    assert counts == EXPECTED_COUNTS
    assert sorted(kept["id"]) == sorted(sample_id(kind) for kind in KEPT)
    metrics = bad_sample_metrics(counts, prefix="train_")
    assert metrics["train_bad_samples"] == len(CASES) - len(KEPT)
    assert metrics["train_bad_samples_image_unreadable"] == 3


def test_raise_stops_at_the_first_bad_sample(zoo_rows: Dataset) -> None:
    with pytest.raises(
        RecipeError,
        match=rf"id='{sample_id(FIRST_BAD)}' .*image_unreadable.*\({len(CASES) - len(KEPT)} bad of {len(CASES)}\)",
    ):
        check_samples(zoo_rows, "raise", where="train split of zoo")


def test_long_answers_are_counted_and_warned_once(
    zoo_rows: Dataset, tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    with caplog.at_level(logging.WARNING, logger="florence_recipes"):
        truncated = count_truncated_targets(
            zoo_rows, tokenizer, max_target_length=32, where="train split of zoo"
        )
    assert truncated == 1
    warnings = [r.getMessage() for r in caplog.records if "max_target_length" in r.getMessage()]
    assert len(warnings) == 1 and f"1 of {len(CASES)} targets" in warnings[0]


def test_number_like_answers_are_flagged_not_changed(tmp_path: Path) -> None:
    """A JSON column mixing strings and numbers comes out of datasets with "45.20" read as 45.2: flag the
    row (with the fix) instead of silently training on and scoring against "45.2"."""
    rows = [_row(0, "a", {"answers": ["45.20"]}), _row(1, "b", {"answers": [7]})]
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "good.png").write_bytes(GOOD)
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    loaded = load_train_rows(tmp_path)
    assert check_samples(loaded, "skip", where="train")[1] == Counter({"bad_answers": 2})
    with pytest.raises(
        RecipeError, match=r"id='1000' .*values that are not strings; in JSON lines quote every answer"
    ):
        check_samples(loaded, "raise", where="train")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, []),
        ("yes", ["yes"]),
        (["a", "b"], ["a", "b"]),
        ([1, "a"], None),
        ([None], None),
        ({"a": 1}, None),
    ],
)
def test_answers_become_a_list_of_strings_or_are_flagged(value: Any, expected: list[str] | None) -> None:
    assert as_text_list(value) == expected


def test_image_problem_names_a_missing_file(tmp_path: Path) -> None:
    assert image_problem({"bytes": None, "path": str(tmp_path / "gone.png")}) == (
        "image_missing",
        f"file not found: {tmp_path / 'gone.png'}",
    )
    assert image_problem({"bytes": b"", "path": None}) == ("image_unreadable", "zero-byte image")
    assert image_problem({"bytes": GOOD, "path": None}) is None


@pytest.mark.parametrize(
    ("dataset", "extra", "message"),
    [
        ("{zoo_without_answers}", [], "missing column(s) answers needed by task 'docvqa'"),
        ("someone/no-such-dataset", [], "cannot load dataset 'someone/no-such-dataset'"),
        ("{docvqa}", ["--dataset_config", "no_such_subset"], "BuilderConfig 'no_such_subset' not found"),
        ("{docvqa}", ["--train_split", "trian"], 'Unknown split "trian"'),
        ("{missing}/my-data", [], "it is not a local path either"),
    ],
    ids=["missing_column", "unknown_dataset", "unknown_subset", "unknown_split", "nonexistent_path"],
)
def test_dataset_level_problems_fail_in_one_line(
    tmp_path: Path, docvqa_dir: Path, dataset: str, extra: list[str], message: str
) -> None:
    no_answers = tmp_path / "no-answers"
    no_answers.mkdir()
    (no_answers / "train.jsonl").write_text(
        json.dumps({k: v for k, v in _row(0, "x", {}).items() if k != "answers"})
    )
    name = dataset.format(zoo_without_answers=no_answers, docvqa=docvqa_dir, missing=tmp_path / "missing")
    with pytest.raises(RecipeError) as raised:
        load_train_rows(name, *extra)
    assert message in str(raised.value) and len(str(raised.value).splitlines()) == 1


def test_a_detection_row_whose_image_cannot_be_read_is_named_not_a_traceback(tmp_path: Path) -> None:
    """Box targets need the image's size: a missing or corrupt image leaves the target empty, and the check names
    the image's problem (one line under raise, counted under skip) instead of a traceback from PIL."""
    (tmp_path / "good.png").write_bytes(GOOD)
    (tmp_path / "corrupt.png").write_bytes(b"not a png")
    objects = [{"bbox": [1, 1, 5, 5], "label": "box"}]
    rows = [
        {"id": "ok", "image": "good.png", "objects": objects},
        {"id": "corrupt", "image": "corrupt.png", "objects": objects},
        {"id": "gone", "image": "gone.png", "objects": objects},
    ]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    loaded = load_train_rows(tmp_path, "--task", "detection")
    with pytest.raises(RecipeError) as raised:
        check_samples(loaded, "raise", "train split")
    assert "bad sample id='corrupt'" in str(raised.value) and "image_unreadable" in str(raised.value)
    assert len(str(raised.value).splitlines()) == 1
    kept, bad = check_samples(loaded, "skip", "train split")
    assert list(kept["id"]) == ["ok"] and bad == Counter(image_unreadable=1, image_missing=1)


# --- the real recipe ------------------------------------------------------------------------------------


def _recipe_args(dataset: Path | str, tiny_model_dir: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        "--config", str(REPO_ROOT / "recipes" / "docvqa" / "smoke_documents.yaml"),
        "--model_name_or_path", str(tiny_model_dir), "--dataset_name", str(dataset),
        "--build_offline_fixtures", "false", "--output_dir", str(output_dir),
        "--max_steps", "2", "--eval_strategy", "no", "--save_strategy", "no", "--dataloader_num_workers", "0",
        *extra,
    ]  # fmt: skip


def test_recipe_stops_at_a_bad_sample_in_one_line(
    zoo_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    result = run_recipe_subprocess("docvqa.py", *_recipe_args(zoo_dir, tiny_model_dir, tmp_path / "out"))
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1
    assert f"bad sample id='{sample_id(FIRST_BAD)}' (source docvqa, row 1): image_unreadable" in error[0]
    assert "Loading weights" not in result.stderr + result.stdout  # stopped before the model was loaded


def test_recipe_skips_and_reports_counts(zoo_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    output_dir = tmp_path / "out"
    result = run_recipe_subprocess(
        "docvqa.py", *_recipe_args(zoo_dir, tiny_model_dir, output_dir, "--on_bad_sample", "skip")
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout
    results = json.loads((output_dir / "all_results.json").read_text())
    reported = {
        k.removeprefix("train_bad_samples_"): v
        for k, v in results.items()
        if k.startswith("train_bad_samples_")
    }
    assert reported == dict(EXPECTED_COUNTS)
    assert results["train_bad_samples"] == sum(EXPECTED_COUNTS.values())
    assert results["train_samples"] == len(KEPT)
    assert results["train_targets_truncated"] == 1
    assert (results["eval_bad_samples"], results["eval_bad_samples_image_unreadable"]) == (1, 1)
    assert results["eval_samples"] == 2
    # The unreadable eval item scores 0 in the headline; the mean over the readable ones is beside it.
    assert (results["eval_unreadable"], results["eval_scored"]) == (1, 2)
    assert results["eval_anls"] == pytest.approx(results["eval_anls_over_readable"] * 2 / 3)


def test_recipe_names_a_missing_dataset_before_loading_the_model(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder"
    result = run_recipe_subprocess(
        "docvqa.py", *_recipe_args(missing, tmp_path / "no-model-either", tmp_path / "out")
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: cannot load dataset '{missing}'")
