"""ONNX export and onnxruntime inference: the exported tiny model gives PyTorch's greedy tokens on every held-out
item of a learned visual-QA run, int8 stays within 0.02 ANLS of fp32, `predict.py --onnx` answers with no torch
model, the files and names are the onnx-community layout, and bad folders are one-line errors."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, run_recipe_subprocess, save_lora_adapter
from PIL import Image

from florence_recipes.builders.model import build_random_florence2
from florence_recipes.builders.visual_qa import dataset_image_blind_baseline, write_synthetic_visual_qa
from florence_recipes.configs.model import ModelArguments
from florence_recipes.data.loading import load_task_split
from florence_recipes.data.tasks import get_task
from florence_recipes.errors import RecipeError
from florence_recipes.evaluation.metrics import anls
from florence_recipes.models.inference import generate_ids, load_for_inference
from florence_recipes.models.onnx_export import export_onnx
from florence_recipes.models.onnx_inference import OnnxFlorence2, present_names
from florence_recipes.models.outputs import decode_texts
from florence_recipes.models.provenance import read_record

LEARN_YAML = REPO_ROOT / "recipes" / "docvqa" / "learn_tiny.yaml"
# Its recipe on one question (the background colour, 5 answers), 250 steps: held-out ANLS 1.0 in ~40 s on 2 cores.
LEARN_DATA = {"num_train_images": 500, "num_validation_images": 40, "questions": ("background",)}
LEARN_EPOCHS = "8"
BATCH = 8  # held-out items per generation, as the evaluation batches them (padded prompts: the tests below)


@pytest.fixture(scope="module")
def learned_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(trained model folder, its visual-QA data): the tiny64 model trained on held-in images only."""
    root = tmp_path_factory.mktemp("onnx-learned")
    data = write_synthetic_visual_qa(root / "visual-qa", **LEARN_DATA)
    model = build_random_florence2(root / "tiny64-florence2", size="tiny64")
    output = root / "run"
    result = run_recipe_subprocess(
        "docvqa.py", "--config", str(LEARN_YAML), "--model_name_or_path", str(model),
        "--dataset_name", str(data), "--build_offline_fixtures", "false", "--output_dir", str(output),
        "--num_train_epochs", LEARN_EPOCHS, "--eval_strategy", "no", "--save_strategy", "no",
        "--dataloader_num_workers", "0",
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return output, data


@pytest.fixture(scope="module")
def exported(learned_run: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("onnx-export") / "onnx"
    export_onnx(ModelArguments(model_name_or_path=str(learned_run[0])), folder, quantize="int8")
    return folder


def held_out_ids(model_dir: Path, data: Path, onnx_dir: Path) -> dict[str, list[np.ndarray]]:
    """Greedy ids of every validation item, per path, in batches, with the recorded evaluation's length."""
    rows = load_task_split(get_task("docvqa"), str(data), "validation")
    length = read_record(str(model_dir)).generation_max_length
    model, processor = load_for_inference(ModelArguments(model_name_or_path=str(model_dir)))
    sessions = {"fp32": OnnxFlorence2(onnx_dir), "int8": OnnxFlorence2(onnx_dir, quantized=True)}
    ids: dict[str, list[np.ndarray]] = {"torch": [], "fp32": [], "int8": []}
    for start in range(0, len(rows), BATCH):
        batch = rows[start : start + BATCH]
        inputs = processor(
            text=batch["prompt"], images=batch["image"], return_tensors="pt", padding="longest"
        )
        ids["torch"] += list(generate_ids(model, inputs, max_length=length, num_beams=1).numpy())
        arrays = {key: value.numpy() for key, value in inputs.items()}
        for name, session in sessions.items():
            ids[name] += list(
                session.generate(
                    arrays["input_ids"], arrays["attention_mask"], arrays["pixel_values"], max_length=length
                )
            )
    return ids


def test_onnx_greedy_tokens_equal_pytorch_on_every_held_out_item(
    learned_run: tuple[Path, Path], exported: Path
) -> None:
    model_dir, data = learned_run
    ids = held_out_ids(model_dir, data, exported)
    rows = load_task_split(get_task("docvqa"), str(data), "validation")
    differing = [
        row["id"]
        for row, t, o in zip(rows, ids["torch"], ids["fp32"], strict=True)
        if not np.array_equal(t, o)
    ]
    assert not differing, f"onnxruntime fp32 differs from PyTorch on held-out items {differing}"

    processor = OnnxFlorence2(exported).processor
    golds = [row["answers"] for row in rows]
    texts = {name: decode_texts(processor.tokenizer, [list(i) for i in seqs]) for name, seqs in ids.items()}
    fp32, int8 = anls(texts["fp32"], golds), anls(texts["int8"], golds)
    # The comparison is on a model that learned: far above the image-blind answer on images it never saw.
    assert fp32 > dataset_image_blind_baseline(data) + 0.4, f"held-out ANLS {fp32:.3f}: the run did not learn"
    assert abs(int8 - fp32) <= 0.02, f"int8 ANLS {int8:.3f} vs fp32 {fp32:.3f}"


def test_export_layout_matches_onnx_community(exported: Path, learned_run: tuple[Path, Path]) -> None:
    """The files and tensor names transformers.js' Florence2ForConditionalGeneration loads, plus provenance."""
    import onnxruntime as ort

    files = sorted(path.name for path in (exported / "onnx").iterdir())
    parts = ["decoder_model_merged", "embed_tokens", "encoder_model", "vision_encoder"]
    assert files == sorted([f"{p}.onnx" for p in parts] + [f"{p}_quantized.onnx" for p in parts])
    for name in ("config.json", "generation_config.json", "processor_config.json", "tokenizer.json"):
        assert (exported / name).is_file(), name
    # transformers.js' Florence2Processor reads its task prompts from preprocessor_config.json
    js_processor = json.loads((exported / "preprocessor_config.json").read_text())
    assert js_processor["task_prompts_without_inputs"]["<CAPTION>"] == "What does the image describe?"
    assert js_processor["tasks_answer_post_processing_type"]["<OD>"] == "description_with_bboxes"
    record = json.loads((exported / "florence_recipes.json").read_text())
    assert record == json.loads((learned_run[0] / "florence_recipes.json").read_text())

    def names(part: str) -> tuple[list[str], list[str]]:
        session = ort.InferenceSession(str(exported / "onnx" / f"{part}.onnx"))
        return [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]

    assert names("vision_encoder") == (["pixel_values"], ["image_features"])
    assert names("embed_tokens") == (["input_ids"], ["inputs_embeds"])
    assert names("encoder_model") == (["inputs_embeds", "attention_mask"], ["last_hidden_state"])
    inputs, outputs = names("decoder_model_merged")
    layers = json.loads((exported / "config.json").read_text())["text_config"]["decoder_layers"]
    assert outputs == ["logits", *present_names(layers)]
    assert set(inputs) == {
        "inputs_embeds", "encoder_attention_mask", "encoder_hidden_states", "use_cache_branch",
        *(name.replace("present.", "past_key_values.") for name in present_names(layers)),
    }  # fmt: skip


# Run recipes/predict.py with every torch module call refused, then report what was imported.
NO_TORCH_MODEL = """
import json, runpy, sys, torch
def refuse(*args, **kwargs):
    raise AssertionError("a torch module was called")
torch.nn.Module.__call__ = refuse
sys.argv = ["predict.py", *sys.argv[1:]]
try:
    runpy.run_path("recipes/predict.py", run_name="__main__")
finally:
    loaded = [m for m in sys.modules if m.endswith("modeling_florence2") or m == "florence_recipes.models.inference"]
    sys.stderr.write("LOADED " + json.dumps(loaded) + "\\n")
"""


def test_predict_onnx_answers_like_pytorch_without_a_torch_model(
    learned_run: tuple[Path, Path],
    exported: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model_dir, data = learned_run
    rows = load_task_split(get_task("docvqa"), str(data), "validation").select(range(3))
    paths = []
    for row in rows:
        paths.append(tmp_path / f"{row['id']}.png")
        row["image"].save(paths[-1])
    question = "What colour is the background?"
    args = ["--image", *map(str, paths), "--question", question, "--json"]
    result = subprocess.run(
        [sys.executable, "-c", NO_TORCH_MODEL, "--onnx", str(exported), *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LOADED []" in result.stderr  # neither the modeling code nor the PyTorch inference path
    onnx_answers = json.loads(result.stdout)
    # The prompt is the one the checkpoint's florence_recipes.json records, filled with the question.
    assert {answer["prompt"] for answer in onnx_answers} == {f"<DocVQA>{question}"}
    code, out, err = run_script(
        "predict.py", ["--model_name_or_path", str(model_dir), *args], monkeypatch, capsys
    )
    assert code == 0, err[-3000:]
    assert onnx_answers == json.loads(out)
    assert [answer["answer"] for answer in onnx_answers] == [row["answers"][0] for row in rows]


@pytest.mark.parametrize("no_repeat_ngram_size", [0, 3])
def test_long_generations_of_a_random_model_match_pytorch(
    tiny_model_dir: Path, tmp_path: Path, no_repeat_ngram_size: int
) -> None:
    """Many cached steps, forced first/last tokens and (as the released generation config sets) no repeated
    3-grams: a random model rambles to the limit, so every step of the loop is compared."""
    folder = tmp_path / "onnx"
    export_onnx(ModelArguments(model_name_or_path=str(tiny_model_dir)), folder)
    config = json.loads((folder / "generation_config.json").read_text())
    config["no_repeat_ngram_size"] = no_repeat_ngram_size
    (folder / "generation_config.json").write_text(json.dumps(config))
    model, processor = load_for_inference(ModelArguments(model_name_or_path=str(tiny_model_dir)))
    images = [Image.new("RGB", (90, 60), colour) for colour in ("red", "navy", "olive")]
    prompts = ["<DocVQA>What is the total?", "<DocVQA>Who?", "<DocVQA>Which year is on the second page?"]
    inputs = processor(text=prompts, images=images, return_tensors="pt", padding="longest")
    kwargs = {"no_repeat_ngram_size": no_repeat_ngram_size} if no_repeat_ngram_size else {}
    with torch.inference_mode():
        expected = model.generate(**inputs, max_new_tokens=24, num_beams=1, **kwargs).numpy()
    arrays = {key: value.numpy() for key, value in inputs.items()}
    got = OnnxFlorence2(folder).generate(
        arrays["input_ids"], arrays["attention_mask"], arrays["pixel_values"], max_new_tokens=24
    )
    assert expected.shape[1] > 10 and np.array_equal(got, expected)


def test_lora_adapter_folder_exports_merged(tmp_path: Path, tiny_model_dir: Path) -> None:
    """A `training_mode: lora` output folder (adapter + processor, no config.json) exports merged."""
    from florence_recipes.models.loading import apply_training_mode, load_model

    args = ModelArguments(model_name_or_path=str(tiny_model_dir), training_mode="lora", lora_r=4)
    adapter = save_lora_adapter(apply_training_mode(load_model(args), args), args, tmp_path / "adapter")
    export_onnx(ModelArguments(model_name_or_path=str(adapter)), tmp_path / "onnx")
    merged, processor = load_for_inference(ModelArguments(model_name_or_path=str(adapter)))
    inputs = processor(
        text=["<DocVQA>What?"], images=[Image.new("RGB", (64, 64), "gray")], return_tensors="pt"
    )
    expected = generate_ids(merged, inputs, max_new_tokens=12, num_beams=1).numpy()
    arrays = {key: value.numpy() for key, value in inputs.items()}
    got = OnnxFlorence2(tmp_path / "onnx").generate(
        arrays["input_ids"], arrays["attention_mask"], arrays["pixel_values"], max_new_tokens=12
    )
    assert np.array_equal(got, expected)


def run_script(
    script: str, args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    """`python recipes/<script> ARGS` in this process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", [script, *args])
    code = 0
    try:
        runpy.run_path(str(REPO_ROOT / "recipes" / script), run_name="__main__")
    except SystemExit as exit_info:
        code = exit_info.code
    out, err = capsys.readouterr()
    return code, out, err


def test_bad_folders_are_one_line_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "bart"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bart"}))
    args = ["--model_name_or_path", str(other), "--output_dir", str(tmp_path / "out")]
    code, _, err = run_script("export_onnx.py", args, monkeypatch, capsys)
    assert (code, err) == (
        1,
        f"error: {other / 'config.json'}: a 'bart' model, not Florence-2; nothing was exported\n",
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RecipeError, match=r"empty: not a Florence-2 checkpoint \(no config.json"):
        export_onnx(ModelArguments(model_name_or_path=str(empty)), tmp_path / "out")
    with pytest.raises(RecipeError, match="the only quantization is int8"):
        export_onnx(ModelArguments(model_name_or_path=str(empty)), tmp_path / "out", quantize="int4")

    image = tmp_path / "x.png"
    Image.new("RGB", (32, 32)).save(image)
    code, _, err = run_script(
        "predict.py", ["--onnx", str(empty), "--image", str(image)], monkeypatch, capsys
    )
    assert code == 1 and err.count("\n") == 1
    assert err.startswith(f"error: --onnx {empty}: not an ONNX export of recipes/export_onnx.py, missing ")


def test_missing_onnx_extra_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "onnxruntime" else find_spec(name)
    )
    with pytest.raises(RecipeError, match=r'^onnxruntime not installed: pip install -e "\.\[onnx\]"'):
        OnnxFlorence2(tmp_path)


def test_benchmark_table_and_json_at_tiny_size(tmp_path: Path) -> None:
    """The benchmark's shape on the tiny model (the base run is the documented command): every path at batch 1
    and the throughput batch, the same generated length everywhere, fp32 tokens identical to PyTorch."""
    from florence_recipes.tooling.onnx_benchmark import (
        PATHS,
        OnnxBenchmarkSettings,
        format_table,
        run_onnx_benchmark,
    )

    settings = OnnxBenchmarkSettings(
        model_size="tiny", work_dir=tmp_path, throughput_batch=2, max_new_tokens=6, repeats=1, threads=1
    )
    result = run_onnx_benchmark(settings, command="test")
    assert [(row["path"], row["batch"]) for row in result["rows"]] == [(p, b) for p in PATHS for b in (1, 2)]
    assert {row["generated_tokens"] for row in result["rows"]} == {6}  # a random tiny model rambles on
    assert result["onnx_fp32_tokens_identical_to_pytorch"] is True
    assert all(row["median_seconds"] > 0 for row in result["rows"]) and result["export_seconds"] > 0
    table = format_table(result)
    assert (
        table.count("\n| ") == 3 and "throughput, batch 2 (images/s)" in table and "tokens identical" in table
    )
    json.dumps(result)  # what the recipe writes


@pytest.mark.slow
def test_base_stand_in_exports_and_matches_pytorch(tmp_path: Path) -> None:
    """The release-shaped base architecture (231M parameters, 768 px) exports, and onnxruntime gives PyTorch's
    greedy tokens on a padded batch of two; int8 files load and answer (~70 s on 2 cores)."""
    model_dir = build_random_florence2(tmp_path / "base-florence2", size="base")
    folder = tmp_path / "onnx"
    export_onnx(ModelArguments(model_name_or_path=str(model_dir)), folder, quantize="int8")
    model, processor = load_for_inference(ModelArguments(model_name_or_path=str(model_dir)))
    images = [Image.new("RGB", (500, 400), "teal"), Image.new("RGB", (300, 600), "orange")]
    prompts = ["<DocVQA>What colour is it?", "<DocVQA>Where is the large shape on the page?"]
    inputs = processor(text=prompts, images=images, return_tensors="pt", padding="longest")
    expected = generate_ids(model, inputs, max_new_tokens=8, num_beams=1).numpy()
    arrays = {key: value.numpy() for key, value in inputs.items()}
    for quantized in (False, True):
        got = OnnxFlorence2(folder, quantized=quantized).generate(
            arrays["input_ids"], arrays["attention_mask"], arrays["pixel_values"], max_new_tokens=8
        )
        if not quantized:
            assert np.array_equal(got, expected)
        assert got.shape[0] == 2 and (got[:, 0] == expected[0, 0]).all()
