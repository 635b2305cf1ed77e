"""A saved model records how it was trained (issue 15), and predict, the demo and evaluate default to it.

Each trained tiny model (vqa, docvqa, detection) is asked through `recipes/predict.py` and the demo's answer
function without being told its task: the answer must be the training eval's own generated text for that
image and question.
"""

from __future__ import annotations

import json
import logging
import runpy
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import REPO_ROOT, sources_of

from florence_recipes.builders.datasets import write_synthetic_detection, write_synthetic_vqa_jsonl
from florence_recipes.configs.model import ModelArguments
from florence_recipes.configs.parser import given_options, parse_evaluation_args
from florence_recipes.configs.training import FlorenceTrainingArguments
from florence_recipes.data.loading import load_task_split
from florence_recipes.data.tasks import TASKS, SourceContext, get_task
from florence_recipes.models.inference import load_for_inference
from florence_recipes.models.loading import apply_training_mode, load_model, set_generation_length
from florence_recipes.models.provenance import PROVENANCE_FILE, read_record, resolve_prompt
from florence_recipes.training.evaluate import apply_training_record
from florence_recipes.training.trainer import FlorenceTrainer

MAX_LENGTH = 24
STEPS = 40
# The prompt each converter writes: `{...}` is the user's text.
PROMPT_FORMATS = {
    "docvqa": "<DocVQA>{question}",
    "vqa": "<VQA>{question}",
    "caption": "<CAPTION>",
    "ocr": "<OCR>",
    "detection": "<OD>",
    "grounding": "<CAPTION_TO_PHRASE_GROUNDING>{caption}",
    "cauldron": "{prompt}",
    "docmatix": "<DocVQA>{question}",
}


def test_every_task_states_its_prompt_format() -> None:
    assert {name: task.prompt_format for name, task in TASKS.items()} == PROMPT_FORMATS


def test_the_formats_are_what_the_converters_write() -> None:
    image = {"bytes": b"\x89PNG-not-decoded", "path": None}
    context = SourceContext("s", "train")
    rows = {
        "docvqa": {
            "questionId": [1],
            "question": ["How?"],
            "image": [image],
            "docId": [3],
            "answers": [["x"]],
        },
        "vqa": {"image": [image], "question": ["How?"], "answer": ["x"]},
        "cauldron": {"images": [[image]], "texts": [[{"user": "How?", "assistant": "x", "source": "s"}]]},
        "caption": {"image": [image], "caption": ["x"]},
        "ocr": {"image": [image], "text": ["x"]},
    }
    for name, batch in rows.items():
        (prompt,) = get_task(name).convert_batch(batch, [0], context)["prompt"]
        expected = PROMPT_FORMATS[name].format(question="How?", prompt="How?")
        assert prompt == expected, name


def record_of(task: str, prompt_format: str) -> dict[str, Any]:
    return {
        "sources": [
            {"name": task, "task": task, "prompt_format": prompt_format, "dataset": "d", "config": None}
        ],
        "max_target_length": 32,
        "generation_max_length": 32,
        "generation_num_beams": 1,
        "training_mode": "full",
    }


@pytest.fixture
def vqa_model_folder(tmp_path: Path) -> Path:
    (tmp_path / PROVENANCE_FILE).write_text(json.dumps(record_of("vqa", "<VQA>{question}")))
    return tmp_path


@pytest.mark.parametrize(
    ("request_", "prompt", "warns"),
    [
        (None, "<VQA>What?", False),
        ("vqa", "<VQA>What?", False),
        ("<VQA>", "<VQA>What?", False),
        ("docvqa", "<DocVQA>What?", True),
        ("<DocVQA>", "<DocVQA>What?", True),
        ("<OD>", "<OD>", True),
    ],
)
def test_requests_follow_the_recording_and_contradictions_warn_once(
    vqa_model_folder: Path, request_: str | None, prompt: str, warns: bool
) -> None:
    choice = resolve_prompt(request_, read_record(str(vqa_model_folder)))
    question = None if prompt == "<OD>" else "What?"
    assert choice.prompt(question) == prompt
    assert (choice.warning is not None) == warns
    if warns:  # one line naming what the model expects
        assert "vqa" in choice.warning and "<VQA>{question}" in choice.warning and "\n" not in choice.warning


def test_without_a_recording_todays_defaults_hold(tmp_path: Path) -> None:
    assert read_record(str(tmp_path)) is None
    choices = [resolve_prompt(None, None), resolve_prompt("grounding", None), resolve_prompt("<OCR>", None)]
    assert choices[0].prompt("What?") == "<DocVQA>What?"
    assert choices[1].prompt("a dog") == "<CAPTION_TO_PHRASE_GROUNDING>a dog"
    assert choices[2].prompt(None) == "<OCR>"
    assert all(choice.warning is None for choice in choices)


# --- trained models ------------------------------------------------------------------------------------


def train_tiny(task: str, data_dir: Path, tiny_model_dir: Path, processor, out: Path):
    """Train the tiny model on `data_dir`'s validation split with `FlorenceTrainer` (frozen vision: fast on a
    CPU), save it like the recipe, and return (final folder, eval rows, the eval's generated texts)."""
    rows = load_task_split(get_task(task), str(data_dir), "validation")
    model_args = ModelArguments(model_name_or_path=str(tiny_model_dir), training_mode="frozen_vision")
    torch.manual_seed(0)
    model = apply_training_mode(load_model(model_args), model_args)
    set_generation_length(model, MAX_LENGTH)
    args = FlorenceTrainingArguments(
        output_dir=str(out), max_steps=STEPS, per_device_train_batch_size=len(rows), per_device_eval_batch_size=3,
        learning_rate=3e-3, lr_scheduler_type="constant", predict_with_generate=True,
        generation_max_length=MAX_LENGTH, generation_num_beams=1, save_strategy="steps", save_steps=STEPS,
        dataloader_num_workers=0, report_to="none", use_cpu=True, logging_steps=STEPS,
    )  # fmt: skip
    trainer = FlorenceTrainer(
        model=model, args=args, processor=processor, sources=sources_of(task), train_dataset=rows,
        eval_dataset=rows, max_target_length=MAX_LENGTH, training_mode="frozen_vision",
    )  # fmt: skip
    trainer.train()
    texts, _, _ = trainer.predict_items()
    trainer.save_final_model(str(out / "final"))
    return out / "final", rows, texts


def predict(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[str, str]:
    monkeypatch.setattr(sys, "argv", ["predict.py", *args])
    runpy.run_path(str(REPO_ROOT / "recipes" / "predict.py"), run_name="__main__")
    captured = capsys.readouterr()
    return captured.out, captured.err


@pytest.mark.parametrize("task", ["vqa", "docvqa", "detection"])
def test_predict_and_demo_use_the_trained_prompt_and_match_the_eval(
    task: str,
    tmp_path: Path,
    tiny_model_dir: Path,
    processor,
    docvqa_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if task == "vqa":
        data = write_synthetic_vqa_jsonl(tmp_path / "vqa")
    elif task == "detection":
        data = write_synthetic_detection(tmp_path / "shapes", num_train=2, num_validation=4)
    else:
        data = docvqa_dir
    model_dir, rows, texts = train_tiny(task, data, tiny_model_dir, processor, tmp_path / "run")
    capsys.readouterr()  # the Trainer's log lines
    assert sum(bool(t) for t in texts) >= 2  # the model says something: equality below is not "" == ""

    # Every saved folder carries the recording: the checkpoint and the final model.
    for folder in (tmp_path / "run" / f"checkpoint-{STEPS}", model_dir):
        record = json.loads((folder / PROVENANCE_FILE).read_text())
        (source,) = record["sources"]
        assert (source["task"], source["prompt_format"]) == (task, PROMPT_FORMATS[task])
        assert record["max_target_length"] == MAX_LENGTH
        assert (record["generation_max_length"], record["generation_num_beams"]) == (MAX_LENGTH, 1)
        assert record["training_mode"] == "frozen_vision"

    demo = runpy.run_path(str(REPO_ROOT / "recipes" / "demo.py"))
    model, loaded_processor = load_for_inference(ModelArguments(model_name_or_path=str(model_dir)))
    record = read_record(str(model_dir))
    choices, default = demo["task_choices"](record)
    assert choices[0][1] == default and task in choices[0][0]  # the menu starts on the trained task
    ask = demo["make_answer"](model, loaded_processor, record, max_new_tokens=None, num_beams=None)

    prefix = PROMPT_FORMATS[task].split("{")[0]
    for index in (0, 1):
        row, expected = rows[index], texts[index]
        image = tmp_path / f"item{index}.png"
        row["image"].save(image)
        question = row["prompt"].removeprefix(prefix)
        args = ["--model_name_or_path", str(model_dir), "--image", str(image), "--json"]
        if question:
            args += ["--question", question]
        out, err = predict(monkeypatch, capsys, *args)
        (result,) = json.loads(out)
        assert result["prompt"] == row["prompt"] and "warning" not in err
        shown, _ = ask(row["image"], default, question)
        if task == "detection":  # boxes: the eval's text parsed as predict and the demo parse it
            parsed = loaded_processor.post_process_generation(
                expected, task="<OD>", image_size=row["image"].size
            )
            assert result["answer"] == parsed["<OD>"] and json.loads(shown) == parsed["<OD>"]
        else:
            assert result["answer"] == expected and shown == expected

    # Asking for another task still works, with one warning line naming what the model expects.
    other = "<CAPTION>" if task == "detection" else "<OD>"
    _, err = predict(
        monkeypatch, capsys, "--model_name_or_path", str(model_dir), "--image", str(image), "--task", other
    )
    warnings = [line for line in err.splitlines() if "warning" in line.lower()]
    assert len(warnings) == 1 and PROMPT_FORMATS[task] in warnings[0]


def test_merged_lora_folder_and_model_card_carry_the_recording(
    tmp_path: Path, tiny_model_dir: Path, processor, docvqa_dir: Path
) -> None:
    rows = load_task_split(get_task("vqa"), str(write_synthetic_vqa_jsonl(tmp_path / "vqa")), "validation")
    model_args = ModelArguments(model_name_or_path=str(tiny_model_dir), training_mode="lora", lora_r=4)
    model = apply_training_mode(load_model(model_args), model_args)
    args = FlorenceTrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=1, per_device_train_batch_size=4, save_strategy="no",
        generation_max_length=MAX_LENGTH, generation_num_beams=2, dataloader_num_workers=0, report_to="none",
        use_cpu=True,
    )  # fmt: skip
    trainer = FlorenceTrainer(
        model=model, args=args, processor=processor, sources=sources_of("vqa"), train_dataset=rows,
        max_target_length=MAX_LENGTH, training_mode="lora",
    )  # fmt: skip
    trainer.train()
    trainer.save_final_model(str(tmp_path / "run"), merge_lora=True)
    record = json.loads((tmp_path / "run" / PROVENANCE_FILE).read_text())
    assert record["training_mode"] == "lora" and record["generation_num_beams"] == 2
    assert record["sources"][0]["prompt_format"] == "<VQA>{question}"
    trainer.create_model_card(model_name="vqa-lora")
    card = (tmp_path / "run" / "README.md").read_text()
    for fact in (
        "<VQA>{question}",
        f"max_target_length: {MAX_LENGTH}",
        "num_beams=2",
        f"max_length={MAX_LENGTH}",
    ):
        assert fact in card, fact


def test_hub_push_uploads_the_recording(
    tmp_path: Path, tiny_model_dir: Path, processor, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers.trainer as hf_trainer

    uploaded: list[set[str]] = []

    class FakeHub:  # no network: the repo "exists", and an upload lists the folder it was given
        def create_repo(self, repo_id: str, **kwargs: Any) -> Any:
            return type("RepoUrl", (), {"repo_id": repo_id})()

        def upload_folder(self, folder_path: str, **kwargs: Any) -> None:
            uploaded.append({p.name for p in Path(folder_path).iterdir()})

    monkeypatch.setattr(hf_trainer, "hf_api", FakeHub)
    model_args = ModelArguments(model_name_or_path=str(tiny_model_dir), training_mode="full")
    args = FlorenceTrainingArguments(
        output_dir=str(tmp_path / "run"),
        push_to_hub=True,
        hub_model_id="me/m",
        report_to="none",
        use_cpu=True,
    )
    trainer = FlorenceTrainer(
        model=load_model(model_args), args=args, processor=processor, sources=sources_of("detection")
    )
    trainer.push_to_hub()
    assert uploaded and PROVENANCE_FILE in uploaded[-1]
    record = json.loads((tmp_path / "run" / PROVENANCE_FILE).read_text())
    assert record["sources"][0]["prompt_format"] == "<OD>"


def test_evaluate_defaults_to_the_recording(vqa_model_folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    record = read_record(str(vqa_model_folder))
    argv = ["--model_name_or_path", str(vqa_model_folder), "--output_dir", "out"]
    _, data_args, eval_args = parse_evaluation_args(argv)
    apply_training_record(record, data_args, eval_args, given_options(argv))
    assert (data_args.task, data_args.max_target_length) == ("vqa", 32)
    assert (eval_args.generation_max_length, eval_args.generation_num_beams) == (32, 1)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # (an INFO line says where from)

    argv += ["--task", "docvqa", "--max_target_length", "64"]
    _, data_args, eval_args = parse_evaluation_args(argv)
    apply_training_record(record, data_args, eval_args, given_options(argv))
    assert (data_args.task, data_args.max_target_length) == ("docvqa", 64)  # the user's choice wins
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "<VQA>{question}" in warning and "docvqa" in warning
