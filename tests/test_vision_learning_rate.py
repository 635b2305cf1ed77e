"""`vision_learning_rate`: the vision tower trains at its own peak rate, on the same schedule as the rest."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest
from conftest import sources_of, standard_features
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from florence_recipes.configs.parser import parse_recipe_args
from florence_recipes.training.trainer import FlorenceTrainer

STEPS = 4


def trainer_for(tiny_model_dir: Path, output_dir: Path, *extra: str) -> FlorenceTrainer:
    _, _, training_args = parse_recipe_args(
        [
            "--model_name_or_path", str(tiny_model_dir), "--output_dir", str(output_dir),
            "--max_steps", str(STEPS), "--per_device_train_batch_size", "2", "--learning_rate", "1e-3",
            "--warmup_steps", "2", "--lr_scheduler_type", "linear", "--weight_decay", "0.01",
            "--save_strategy", "no", "--dataloader_num_workers", "0", "--report_to", "none",
            "--disable_tqdm", "true", *extra,
        ]
    )  # fmt: skip
    rows = {
        "id": [str(i) for i in range(4)], "image": [Image.new("RGB", (64, 64), "white")] * 4,
        "image_id": ["0"] * 4, "prompt": ["<DocVQA>What?"] * 4, "target": ["42"] * 4, "answers": [["42"]] * 4,
        "tags": [[]] * 4, "source": ["docvqa"] * 4,
    }  # fmt: skip
    return FlorenceTrainer(
        model=AutoModelForImageTextToText.from_pretrained(tiny_model_dir),
        args=training_args,
        processor=AutoProcessor.from_pretrained(tiny_model_dir),
        sources=sources_of("docvqa"),
        train_dataset=datasets.Dataset.from_dict(rows, features=standard_features()),
    )


def test_vision_tower_gets_its_own_rate_on_the_same_schedule(tiny_model_dir: Path, tmp_path: Path) -> None:
    trainer = trainer_for(tiny_model_dir, tmp_path, "--vision_learning_rate", "1e-4")
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    trainer.train()
    groups = trainer.optimizer.param_groups
    # Every trainable parameter in exactly one group; the tower's groups hold only the tower.
    seen = [names[id(p)] for group in groups for p in group["params"]]
    assert sorted(seen) == sorted(n for n, p in trainer.model.named_parameters() if p.requires_grad)
    for group in groups:
        in_tower = {".vision_tower." in f".{names[id(p)]}" for p in group["params"]}
        assert len(in_tower) == 1
        assert group["initial_lr"] == (1e-4 if in_tower.pop() else 1e-3)
    # weight decay stays split as the Trainer splits it (biases and norms without decay), in both rates.
    assert {(g["initial_lr"], g["weight_decay"]) for g in groups} == {
        (1e-3, 0.01), (1e-3, 0.0), (1e-4, 0.01), (1e-4, 0.0)
    }  # fmt: skip
    # The scheduler scaled both rates by the same factor: same ratio at the end of training.
    ratios = {group["lr"] / group["initial_lr"] for group in groups}
    assert len({round(r, 12) for r in ratios}) == 1


def test_without_it_one_rate_for_all(tiny_model_dir: Path, tmp_path: Path) -> None:
    trainer = trainer_for(tiny_model_dir, tmp_path)
    trainer.create_optimizer()
    assert {group["lr"] for group in trainer.optimizer.param_groups} == {1e-3}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--vision_learning_rate", "0"], "vision_learning_rate must be > 0, got 0.0"),
        (["--vision_learning_rate", "1e-4", "--training_mode", "frozen_vision"],
         "vision_learning_rate trains the vision tower: valid only with training_mode=full (got frozen_vision"),
        (["--vision_learning_rate", "1e-4", "--training_mode", "lora"], "(got lora, which freezes it)"),
    ],
    ids=["zero", "frozen_vision", "lora"],
)  # fmt: skip
def test_bad_values_are_one_line(capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_recipe_args(["--output_dir", "unused", *args])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


@pytest.mark.parametrize("via", ["--deepspeed", "accelerate config"])
def test_a_deepspeed_config_with_its_own_optimizer_is_refused(
    via: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """DeepSpeed would build that optimizer with one rate for all parameters and ignore vision_learning_rate."""
    ds_config = tmp_path / "ds.json"
    ds_config.write_text(
        '{"optimizer": {"type": "AdamW", "params": {"lr": 1e-4}}, "zero_optimization": {"stage": 2}}'
    )
    args = ["--output_dir", "unused", "--vision_learning_rate", "1e-4"]
    if via == "--deepspeed":
        args += ["--deepspeed", str(ds_config)]
    else:  # `accelerate launch` passes an accelerate config's deepspeed_config_file on like this
        monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(ds_config))
    with pytest.raises(SystemExit):
        parse_recipe_args(args)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f'{ds_config} has its own "optimizer" section' in err, err
    ds_config.write_text('{"zero_optimization": {"stage": 2}}')  # without that section it is accepted
    parse_recipe_args(args)
    ds_config.write_text("{not json")
    with pytest.raises(SystemExit):
        parse_recipe_args(args)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"DeepSpeed config {ds_config}:" in err, err
