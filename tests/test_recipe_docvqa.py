"""The DocVQA recipe end to end, on the tiny random Florence-2 and synthetic documents."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import torch
from conftest import SMOKE_YAML, run_recipe_subprocess, sources_of, standard_features
from PIL import Image, ImageDraw
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor

from florence_recipes.configs.parser import parse_recipe_args
from florence_recipes.models.loading import (
    VISION_MODULES,
    apply_training_mode,
    load_model,
    load_processor,
    set_generation_length,
)
from florence_recipes.training.trainer import FlorenceTrainer

ANSWERS = ["45.20", "Acme Corp", "12/03/1998", "John Smith", "4711", "$ 9.99", "Oslo", "blue"]


def smoke_args(tiny_model_dir: Path, docvqa_dir: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        "--config", str(SMOKE_YAML), "--model_name_or_path", str(tiny_model_dir),
        "--dataset_name", str(docvqa_dir), "--output_dir", str(output_dir), "--num_train_epochs", "2", *extra,
    ]  # fmt: skip


def eight_examples() -> datasets.Dataset:
    features = standard_features()
    rows: dict[str, list] = {column: [] for column in features}
    for i, answer in enumerate(ANSWERS):
        image = Image.new("RGB", (200, 150), "white")
        ImageDraw.Draw(image).text((10, 10), answer, fill="black")
        for column, value in {
            "id": str(i), "image": image, "image_id": str(i), "prompt": f"<DocVQA>What is field number {i}?",
            "target": answer, "answers": [answer], "tags": [], "source": "docvqa",
        }.items():  # fmt: skip
            rows[column].append(value)
    return datasets.Dataset.from_dict(rows, features=features)


# Slow: the default suite's held-out learning test (tests/test_visual_qa.py) trains and generates through the same
# recipe path and proves more than memorisation.
@pytest.mark.slow
def test_tiny_model_overfits_eight_examples_to_anls_1(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Labels, masking, generation and decoding are all right iff the model can reproduce its training set."""
    model_args, _, training_args = parse_recipe_args(
        [
            "--model_name_or_path", str(tiny_model_dir), "--output_dir", str(tmp_path), "--learning_rate", "3e-3",
            "--max_steps", "200", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "8",
            "--warmup_steps", "0.05", "--weight_decay", "0", "--dataloader_num_workers", "0",
            "--save_strategy", "no", "--generation_max_length", "16", "--disable_tqdm", "true",
        ]
    )  # fmt: skip
    dataset = eight_examples()
    processor = load_processor(model_args)
    model = load_model(model_args)
    set_generation_length(model, training_args.generation_max_length)
    trainer = FlorenceTrainer(
        model=apply_training_mode(model, model_args),
        args=training_args,
        processor=processor,
        sources=sources_of("docvqa"),
        train_dataset=dataset,
        eval_dataset=dataset,
    )
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    assert before["eval_anls"] < 0.2
    texts, items, predicted = trainer.predict_items()
    assert texts == ANSWERS and items == [{"anls": 1.0, "levenshtein": 1.0, "exact_match": 1.0}] * 8
    scores = ("eval_anls", "eval_levenshtein", "eval_exact_match", "eval_count", "eval_scored", "eval_loss")
    assert {key: predicted[key] for key in scores} == {key: after[key] for key in scores}
    assert after["eval_anls"] == 1.0 and after["eval_exact_match"] == 1.0 and after["eval_count"] == 8


def test_smoke_recipe_end_to_end(tiny_model_dir: Path, docvqa_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = run_recipe_subprocess("docvqa.py", *smoke_args(tiny_model_dir, docvqa_dir, out))
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("model.safetensors", "config.json", "generation_config.json", "processor_config.json",
                 "tokenizer.json", "README.md", "all_results.json"):  # fmt: skip
        assert (out / name).is_file(), name
    results = json.loads((out / "all_results.json").read_text())
    assert 0.0 <= results["eval_anls"] <= 1.0
    assert results["eval_count"] == results["eval_samples"] == 12  # 4 validation documents x 3 questions
    card = (out / "README.md").read_text()
    assert "florence-recipes" in card and "Anls" in card and "<DocVQA>" in card
    assert list(out.glob("checkpoint-*")), "the smoke run leaves a checkpoint"
    # Its last log line says what the number means and which command shows learning.
    log_lines = [line for line in (result.stdout + result.stderr).splitlines() if " - INFO - " in line]
    assert "checks the pipeline" in log_lines[-1] and "recipes/docvqa/learn_tiny.yaml" in log_lines[-1]

    model = AutoModelForImageTextToText.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    inputs = processor(
        text="<DocVQA>What is the total?", images=Image.new("RGB", (300, 400), "white"), return_tensors="pt"
    )
    generated = model.generate(**inputs, max_new_tokens=8)
    assert (
        generated.shape[0] == 1 and generated[0, 0].item() == model.config.text_config.decoder_start_token_id
    )
    assert isinstance(processor.batch_decode(generated, skip_special_tokens=True)[0], str)


def test_frozen_vision_weights_are_bit_identical_after_training(
    tiny_model_dir: Path, docvqa_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "frozen"
    result = run_recipe_subprocess(
        "docvqa.py",
        *smoke_args(tiny_model_dir, docvqa_dir, out, "--training_mode", "frozen_vision", "--max_steps", "6",
                    "--do_eval", "false", "--eval_strategy", "no", "--save_strategy", "no"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "training_mode=frozen_vision" in result.stdout + result.stderr
    before, after = load_file(tiny_model_dir / "model.safetensors"), load_file(out / "model.safetensors")
    vision = [k for k in before if any(f".{m}." in f".{k}" for m in VISION_MODULES)]
    others = [k for k in before if k not in vision and "language_model" in k]
    assert len(vision) > 50
    assert all(torch.equal(before[k], after[k]) for k in vision), "a frozen vision weight changed"
    assert any(not torch.equal(before[k], after[k]) for k in others), "the language model did not train"


def test_lora_adapters_are_saved_and_reload(tiny_model_dir: Path, docvqa_dir: Path, tmp_path: Path) -> None:
    from peft import PeftModel

    out = tmp_path / "lora"
    result = run_recipe_subprocess(
        "docvqa.py",
        *smoke_args(tiny_model_dir, docvqa_dir, out, "--training_mode", "lora", "--lora_r", "4", "--max_steps", "6",
                    "--do_eval", "false", "--eval_strategy", "no", "--save_strategy", "no"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert not (out / "model.safetensors").exists(), "adapter mode saves only the adapters"
    adapter = load_file(out / "adapter_model.safetensors")
    assert adapter and all("lora_" in k and "language_model" in k for k in adapter)

    base = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    model = PeftModel.from_pretrained(base, out)
    processor = AutoProcessor.from_pretrained(out)
    inputs = processor(
        text="<DocVQA>What is the date?", images=Image.new("RGB", (64, 64)), return_tensors="pt"
    )
    assert model.generate(**inputs, max_new_tokens=4).shape[0] == 1


def test_lora_merged_checkpoint_loads_as_plain_florence2(
    tiny_model_dir: Path, docvqa_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "merged"
    result = run_recipe_subprocess(
        "docvqa.py",
        *smoke_args(tiny_model_dir, docvqa_dir, out, "--training_mode", "lora", "--merge_lora", "true",
                    "--max_steps", "4", "--do_eval", "false", "--eval_strategy", "no", "--save_strategy", "no"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (out / "adapter_config.json").exists()
    merged = load_file(out / "model.safetensors")
    assert not any("lora_" in k for k in merged)
    base = load_file(tiny_model_dir / "model.safetensors")
    q_proj = next(k for k in base if "language_model" in k and k.endswith("q_proj.weight"))
    assert not torch.equal(base[q_proj], merged[q_proj]), "the adapters were not merged in"
    AutoModelForImageTextToText.from_pretrained(out)


def test_push_to_hub_without_hub_access_fails_before_training(
    tiny_model_dir: Path, docvqa_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "push"
    result = run_recipe_subprocess(
        "docvqa.py",
        *smoke_args(
            tiny_model_dir, docvqa_dir, out, "--push_to_hub", "true", "--hub_model_id", "me/florence-docvqa"
        ),
    )
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-2000:]
    assert "--push_to_hub: cannot authenticate with the Hugging Face Hub" in errors[0]
    assert "Traceback" not in result.stderr
    assert not out.exists() or not any(out.iterdir()), "nothing may be trained or written"
