"""recipes/predict.py and the shared inference helpers: answers on stdout (plain or JSON), boxes of detection
tasks parsed by the processor and drawn to a PNG, LoRA adapter folders loaded onto their base model."""

from __future__ import annotations

import json
import re
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, save_lora_adapter
from eval_helpers import fit_tiny_model
from peft import PeftModel
from PIL import Image, ImageChops

from florence_recipes.builders.datasets import write_synthetic_detection
from florence_recipes.configs.model import ModelArguments
from florence_recipes.data.collator import Florence2Collator
from florence_recipes.data.loading import load_task_split
from florence_recipes.data.tasks import get_task
from florence_recipes.errors import RecipeError
from florence_recipes.models.inference import answer, load_for_inference
from florence_recipes.models.loading import apply_training_mode, load_model
from florence_recipes.models.outputs import draw_regions

GENERATION = ["--num_beams", "1", "--max_new_tokens", "40"]
SHAPES = {"rectangle", "circle", "triangle"}


def predict(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Run recipes/predict.py in this process (as `python recipes/predict.py ARGS`) and return its stdout."""
    monkeypatch.setattr(sys, "argv", ["predict.py", *args])
    runpy.run_path(str(REPO_ROOT / "recipes" / "predict.py"), run_name="__main__")
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def documents(tmp_path_factory: pytest.TempPathFactory, docvqa_dir: Path) -> list[tuple[Path, str]]:
    """(image file, question) of questions about the first two validation documents."""
    folder = tmp_path_factory.mktemp("documents")
    rows = load_task_split(get_task("docvqa"), str(docvqa_dir), "validation").select([0, 3])
    items = []
    for index, row in enumerate(rows):
        path = folder / f"doc{index}.png"
        row["image"].save(path)
        items.append((path, row["prompt"].removeprefix("<DocVQA>")))
    return items


def test_question_plain_and_json(
    documents: list[tuple[Path, str]],
    fitted_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (first, question), (second, _) = documents
    model, processor = load_for_inference(ModelArguments(model_name_or_path=str(fitted_model_dir)))
    expected = answer(
        model,
        processor,
        [Image.open(first), Image.open(second)],
        text=question,
        max_new_tokens=40,
        num_beams=1,
    )
    assert any(expected)  # the fitted model says something

    common = ["--model_name_or_path", str(fitted_model_dir), "--question", question, *GENERATION]
    out = predict(monkeypatch, capsys, *common, "--image", str(first), "--json")
    assert json.loads(out) == [{"image": str(first), "prompt": "<DocVQA>" + question, "answer": expected[0]}]
    out = predict(monkeypatch, capsys, *common, "--image", str(first), str(second), "--batch_size", "1")
    assert out.splitlines() == [f"{first}: {expected[0]}", f"{second}: {expected[1]}"]
    out = predict(monkeypatch, capsys, *common, "--image", str(first))
    assert out == expected[0] + "\n"


def test_detection_boxes_are_parsed_and_drawn(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_synthetic_detection(tmp_path / "shapes", num_train=2, num_validation=4)
    model_dir = fit_tiny_model(tiny_model_dir, data, tmp_path / "detector", task="detection", steps=80)
    image = data / "images" / "validation-00000.png"
    out = predict(
        monkeypatch, capsys,
        "--model_name_or_path", str(model_dir), "--image", str(image), "--task", "<OD>",
        "--output_dir", str(tmp_path / "drawn"), "--json", *GENERATION,
    )  # fmt: skip
    (result,) = json.loads(out)
    boxes, labels = result["answer"]["bboxes"], result["answer"]["labels"]
    assert boxes and len(boxes) == len(labels) and set(labels) <= SHAPES
    width, height = Image.open(image).size
    for x0, y0, x1, y1 in boxes:  # pixels of this image, not 0..999 bins
        assert 0 <= x0 <= x1 <= width and 0 <= y0 <= y1 <= height
    drawn = Path(result["drawn"])
    assert drawn == tmp_path / "drawn" / "validation-00000_od.png"
    original, painted = Image.open(image).convert("RGB"), Image.open(drawn)
    assert painted.size == original.size
    x0, y0, x1, y1 = (round(v) for v in boxes[0])
    changed = np.asarray(ImageChops.difference(original, painted).convert("L")) > 0
    assert changed[y0 : y1 + 1, x0].any() and changed[y0 : y1 + 1, x1].any()  # both vertical edges drawn


def test_draw_regions_handles_quad_boxes_polygons_and_swapped_corners() -> None:
    image = Image.new("RGB", (100, 80), "white")
    parsed = {
        "bboxes": [[60, 50, 20, 10]],  # x1 < x0: drawn, not a PIL error
        "quad_boxes": [[5, 5, 30, 5, 30, 20, 5, 20]],
        "polygons": [[[50, 50, 90, 50, 70, 75]], [[1, 2]]],  # the second is too short to draw
        "labels": ["box", "quad", "tri", "dot"],
    }
    drawn = np.asarray(draw_regions(image, parsed))
    assert drawn[10:51, 20].min() < 255 and drawn[5, 5:31].min() < 255 and drawn[50, 50:91].min() < 255
    assert np.asarray(image).min() == 255  # the input is left untouched


def test_lora_adapter_folder_is_applied_to_its_base_model(tmp_path: Path, tiny_model_dir: Path) -> None:
    lora_args = ModelArguments(model_name_or_path=str(tiny_model_dir), training_mode="lora", lora_r=4)
    peft_model = apply_training_mode(load_model(lora_args), lora_args)
    assert isinstance(peft_model, PeftModel)  # saved as an adapter folder, like training_mode: lora
    adapter = save_lora_adapter(peft_model, lora_args, tmp_path / "adapter")
    assert (adapter / "adapter_config.json").is_file() and not (adapter / "config.json").exists()

    merged, processor = load_for_inference(ModelArguments(model_name_or_path=str(adapter)))
    assert not any("lora" in name for name, _ in merged.named_parameters())
    base, _ = load_for_inference(ModelArguments(model_name_or_path=str(tiny_model_dir)))
    rows = [{"image": Image.new("RGB", (64, 64), "gray"), "prompt": "<DocVQA>What is it?", "target": "x"}]
    batch = Florence2Collator(processor)(rows)
    peft_model.eval()
    with torch.no_grad():
        expected = peft_model(**batch).logits
        assert torch.allclose(merged(**batch).logits, expected, atol=1e-4)
        assert not torch.allclose(base(**batch).logits, expected, atol=1e-2)


def test_unreadable_image_is_a_one_line_error(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "scan.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(SystemExit) as exit_info:
        predict(monkeypatch, capsys, "--model_name_or_path", str(tiny_model_dir), "--image", str(bad))
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: --image {bad}: cannot read the image") and err.count("\n") == 1


def test_missing_checkpoint_or_adapter_base_is_a_recipe_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(RecipeError, match=re.escape(f"model_name_or_path={missing}")):
        load_for_inference(ModelArguments(model_name_or_path=str(missing)))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(missing)}))
    with pytest.raises(RecipeError, match=r"adapter_config\.json: cannot load the base model"):
        load_for_inference(ModelArguments(model_name_or_path=str(adapter)))
