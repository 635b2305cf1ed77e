"""Release-shaped stand-ins and checkpoints in the original remote-code layout (florence_recipes/legacy.py).

The legacy fixture is the tiny native model written back in the original layout (builders/legacy_model.py);
the expected original key names below are spelled out independently, family by family, from transformers'
`convert_florence2_original_pytorch_to_hf.py` and the original `modeling_florence2.py`.
"""

from __future__ import annotations

import json
import re
import runpy
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, run_recipe_subprocess
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoProcessor, Florence2ForConditionalGeneration

from florence_recipes.builders.legacy_model import build_legacy_florence2, write_legacy_florence2
from florence_recipes.builders.model import build_config, build_processor, build_random_florence2
from florence_recipes.configs.model import ModelArguments
from florence_recipes.data.loading import load_task_split
from florence_recipes.data.tasks import get_task
from florence_recipes.errors import RecipeError
from florence_recipes.models.florence2 import (
    BART_VOCAB_SIZE,
    FLORENCE_TOKENS,
    RELEASED_VOCAB_SIZE,
    padded_vocab_size,
)
from florence_recipes.models.inference import load_for_inference
from florence_recipes.models.legacy import CONVERTED_MARKER, cache_root, is_legacy_config, native_checkpoint
from florence_recipes.models.legacy_weights import (
    NATIVE_TIED,
    convert_state_dict,
    to_legacy_key,
    to_legacy_state_dict,
    to_native_key,
)
from florence_recipes.models.provenance import read_record

# Released parameter counts per module group (transformers' Florence2ForConditionalGeneration; the LM head is
# tied to the embeddings, so it adds no parameters of its own). Totals: Florence-2-base 231.4M, -large 770.2M.
PARAMETER_GROUPS = {
    "base": {
        "vision_tower": 90_368_000,
        "projector": 839_168,
        "encoder": 43_316_736,
        "decoder": 57_500_160,
        "embeddings": 39_419_904,  # 51,328 x 768
        "lm_head": 0,
    },
    "large": {
        "vision_tower": 360_632_320,
        "projector": 2_201_600,
        "encoder": 152_207_360,
        "decoder": 202_612_736,
        "embeddings": 52_559_872,  # 51,328 x 1024
        "lm_head": 0,
    },
}
RELEASED_TOTAL = {"base": 231.4e6, "large": 770.2e6}


def meta_model(size: str) -> Florence2ForConditionalGeneration:
    """The released architecture on the meta device: shapes and counts without memory or init time."""
    config = build_config(size, padded_vocab_size(RELEASED_VOCAB_SIZE + 1), RELEASED_VOCAB_SIZE)
    with torch.device("meta"):
        return Florence2ForConditionalGeneration(config)


def parameter_groups(model: torch.nn.Module) -> dict[str, int]:
    groups = dict.fromkeys(PARAMETER_GROUPS["base"], 0)
    prefixes = {
        "model.vision_tower.": "vision_tower",
        "model.multi_modal_projector.": "projector",
        "model.language_model.shared.": "embeddings",
        "model.language_model.encoder.": "encoder",
        "model.language_model.decoder.": "decoder",
        "lm_head.": "lm_head",
    }
    for name, param in model.named_parameters():  # tied parameters once, under their first name
        group = next(g for prefix, g in prefixes.items() if name.startswith(prefix))
        groups[group] += param.numel()
    return groups


@pytest.mark.parametrize("size", ["base", "large"])
def test_stand_in_parameter_counts_per_module_group(size: str) -> None:
    model = meta_model(size)
    assert parameter_groups(model) == PARAMETER_GROUPS[size]
    assert model.lm_head.weight is model.model.language_model.shared.weight
    total = sum(p.numel() for p in model.parameters())
    assert abs(total - RELEASED_TOTAL[size]) <= 0.05e6, total


def test_stand_in_tokenizer_and_processor_match_the_release() -> None:
    processor = build_processor(768, BART_VOCAB_SIZE)
    tokenizer = processor.tokenizer
    assert len(tokenizer) == RELEASED_VOCAB_SIZE + 1 == 51_290  # the released 51,289 + the native <image>
    assert tokenizer.image_token == "<image>" and tokenizer.image_token_id == 51_289
    ids = tokenizer.convert_tokens_to_ids(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    assert ids == [0, 1, 2, 3, 50_264]
    assert (tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.convert_tokens_to_ids(FLORENCE_TOKENS) == list(range(50_265, 51_289))
    assert tokenizer.convert_tokens_to_ids(["<od>", "<loc_0>", "<loc_999>", "<and>"]) == [
        50_265,
        50_269,
        51_268,
        51_288,
    ]
    # As in the release, the task and location tokens are special: skip_special_tokens drops them.
    assert tokenizer.decode([50_269, 51_288], skip_special_tokens=True) == ""
    assert tokenizer.model_max_length == 1024
    assert tokenizer.decode(tokenizer("Total amount: $45.00").input_ids, skip_special_tokens=True) == (
        "Total amount: $45.00"
    )
    image = processor.image_processor.to_dict()
    assert image["size"] == {"height": 768, "width": 768} and image["crop_size"] == {
        "height": 768,
        "width": 768,
    }
    assert (image["resample"], image["do_center_crop"], image["do_rescale"]) == (3, False, True)
    assert image["rescale_factor"] == pytest.approx(1 / 255)
    assert (list(image["image_mean"]), list(image["image_std"])) == (
        [0.485, 0.456, 0.406],
        [0.229, 0.224, 0.225],
    )
    assert image["image_seq_length"] == processor.num_image_tokens == 577
    batch = processor(text=["<OCR>"], images=[Image.new("RGB", (100, 60))], return_tensors="pt")
    assert batch["pixel_values"].shape == (1, 3, 768, 768)
    assert (batch["input_ids"] == 51_289).sum() == 577


def expected_legacy_keys(depths: list[int], layers: int) -> set[str]:
    """Every tensor of the original `Florence2ForConditionalGeneration.state_dict()`, spelled out."""
    keys = {
        "image_projection",
        "image_proj_norm.weight",
        "image_proj_norm.bias",
        "image_pos_embed.row_embeddings.weight",
        "image_pos_embed.column_embeddings.weight",
        "visual_temporal_embed.pos_idx_to_embed",
        "language_model.final_logits_bias",
        "language_model.lm_head.weight",
        "language_model.model.shared.weight",
    }
    for stage, depth in enumerate(depths):
        keys |= {f"vision_tower.convs.{stage}.{m}.{p}" for m in ("proj", "norm") for p in ("weight", "bias")}
        for block in range(depth):
            for kind, attn in (("spatial_block", "window_attn"), ("channel_block", "channel_attn")):
                prefix = f"vision_tower.blocks.{stage}.{block}.{kind}."
                modules = ["conv1.fn.dw", "conv2.fn.dw", f"{attn}.norm", f"{attn}.fn.qkv", f"{attn}.fn.proj"]
                modules += ["ffn.norm", "ffn.fn.net.fc1", "ffn.fn.net.fc2"]
                keys |= {prefix + m + "." + p for m in modules for p in ("weight", "bias")}
    for side in ("encoder", "decoder"):
        prefix = f"language_model.model.{side}."
        keys |= {prefix + "embed_tokens.weight", prefix + "embed_positions.weight"}
        keys |= {prefix + f"layernorm_embedding.{p}" for p in ("weight", "bias")}
        blocks = ["self_attn", "self_attn_layer_norm", "final_layer_norm", "fc1", "fc2"]
        if side == "decoder":
            blocks += ["encoder_attn", "encoder_attn_layer_norm"]
        for layer in range(layers):
            for block in blocks:
                is_attention = block.endswith("attn")
                names = (
                    [f"{block}.{x}" for x in ("q_proj", "k_proj", "v_proj", "out_proj")]
                    if is_attention
                    else [block]
                )
                keys |= {f"{prefix}layers.{layer}.{n}.{p}" for n in names for p in ("weight", "bias")}
    return keys


def test_base_legacy_keys_and_shapes_are_the_originals() -> None:
    """The full original key set and the shapes of every tensor family for Florence-2-base (on the meta device)."""
    native = {k: v for k, v in meta_model("base").state_dict().items() if k not in NATIVE_TIED}
    legacy = to_legacy_state_dict(native, RELEASED_VOCAB_SIZE)
    assert set(legacy) == expected_legacy_keys([1, 1, 9, 1], 6)
    shapes = {k: tuple(v.shape) for k, v in legacy.items()}
    assert shapes["vision_tower.convs.0.proj.weight"] == (128, 3, 7, 7)
    assert shapes["vision_tower.convs.1.norm.weight"] == (128,)  # pre-norm on the stage's input
    assert shapes["vision_tower.blocks.2.8.spatial_block.window_attn.fn.qkv.weight"] == (1536, 512)
    assert shapes["vision_tower.blocks.3.0.channel_block.conv1.fn.dw.weight"] == (1024, 1, 3, 3)
    assert shapes["image_projection"] == (1024, 768)  # (dim_embed[-1], projection_dim): x @ image_projection
    assert shapes["image_pos_embed.row_embeddings.weight"] == (50, 512)
    assert shapes["visual_temporal_embed.pos_idx_to_embed"] == (100, 1024)
    assert shapes["language_model.model.shared.weight"] == (51_289, 768)
    assert shapes["language_model.lm_head.weight"] == (51_289, 768)
    assert shapes["language_model.final_logits_bias"] == (1, 51_289)
    assert shapes["language_model.model.encoder.embed_positions.weight"] == (1026, 768)


@pytest.fixture(scope="module")
def legacy_dirs(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("legacy")
    return {
        fmt: write_legacy_florence2(tiny_model_dir, root / fmt, weights_format=fmt)
        for fmt in ("bin", "safetensors")
    }


def test_every_key_consumed_once_and_every_native_key_produced_once(
    legacy_dirs: dict[str, Path], tiny_model_dir: Path
) -> None:
    legacy = torch.load(legacy_dirs["bin"] / "pytorch_model.bin", weights_only=True)
    assert set(legacy) == expected_legacy_keys([1, 1, 1, 1], 2)
    native = load_file(str(tiny_model_dir / "model.safetensors"))
    # The renaming is a bijection between the original tensors and the native ones.
    renamed = [to_native_key(k) for k in legacy if k != "language_model.final_logits_bias"]
    assert len(renamed) == len(set(renamed)) and None not in renamed
    assert set(renamed) == set(native) | set(NATIVE_TIED)
    assert all(
        to_legacy_key(to_native_key(k)) == k for k in legacy if k != "language_model.final_logits_bias"
    )
    shapes = {k: v.shape for k, v in native.items()}
    converted = convert_state_dict(legacy, shapes)
    assert sorted(converted) == sorted(native)


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_native_legacy_native_is_bit_identical(
    legacy_dirs: dict[str, Path], tiny_model_dir: Path, fmt: str
) -> None:
    config = json.loads((legacy_dirs[fmt] / "config.json").read_text())
    assert is_legacy_config(config) and not is_legacy_config(
        json.loads((tiny_model_dir / "config.json").read_text())
    )
    converted = Path(native_checkpoint(str(legacy_dirs[fmt])))
    before, after = (
        load_file(str(tiny_model_dir / "model.safetensors")),
        load_file(str(converted / "model.safetensors")),
    )
    assert sorted(before) == sorted(after)
    assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)
    assert json.loads((converted / "config.json").read_text()) == json.loads(
        (tiny_model_dir / "config.json").read_text()
    )
    native_processor, converted_processor = (
        AutoProcessor.from_pretrained(tiny_model_dir),
        AutoProcessor.from_pretrained(converted),
    )
    assert converted_processor.tokenizer.get_vocab() == native_processor.tokenizer.get_vocab()
    assert converted_processor.tokenizer.image_token_id == native_processor.tokenizer.image_token_id
    assert converted_processor.tokenizer.all_special_ids == native_processor.tokenizer.all_special_ids
    settings = (
        "size",
        "crop_size",
        "resample",
        "rescale_factor",
        "image_mean",
        "image_std",
        "image_seq_length",
    )
    native_image, converted_image = (
        native_processor.image_processor.to_dict(),
        converted_processor.image_processor.to_dict(),
    )
    assert {k: converted_image[k] for k in settings} == {k: native_image[k] for k in settings}
    # A second resolution reuses the cached copy.
    assert native_checkpoint(str(legacy_dirs[fmt])) == str(converted)


def test_converted_model_generates_what_the_native_one_does(
    legacy_dirs: dict[str, Path], tiny_model_dir: Path
) -> None:
    native, processor = load_for_inference(ModelArguments(model_name_or_path=str(tiny_model_dir)))
    converted, converted_processor = load_for_inference(
        ModelArguments(model_name_or_path=str(legacy_dirs["bin"]))
    )
    images = [Image.new("RGB", (90, 120), (200, 30, 30)), Image.effect_noise((128, 128), 60).convert("RGB")]
    batch = processor(
        text=["<DocVQA>What is the total?", "<OD>"], images=images, return_tensors="pt", padding=True
    )
    assert torch.equal(
        batch["input_ids"],
        converted_processor(
            text=["<DocVQA>What is the total?", "<OD>"], images=images, return_tensors="pt", padding=True
        )["input_ids"],
    )
    # Explicit settings, so that only the weights and the processor decide.
    for settings in (
        {"num_beams": 1, "no_repeat_ngram_size": 0},
        {"num_beams": 3, "no_repeat_ngram_size": 3},
    ):
        expected = native.generate(**batch, max_new_tokens=12, **settings)
        got = converted.generate(**batch, max_new_tokens=12, **settings)
        assert torch.equal(expected, got)
        assert processor.batch_decode(expected) == converted_processor.batch_decode(got)


def _break(folder: Path, tmp_path: Path, edit) -> Path:
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    state = torch.load(broken / "pytorch_model.bin", weights_only=True)
    edit(state)
    torch.save(state, broken / "pytorch_model.bin")
    return broken


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda s: s.pop("vision_tower.blocks.2.0.channel_block.ffn.fn.net.fc2.bias"),
            r"missing keys vision_tower\.blocks\.2\.0\.channel_block\.ffn\.fn\.net\.fc2\.bias",
        ),
        (
            lambda s: s.update({"vision_tower.head.weight": torch.zeros(1000, 64)}),
            r"unexpected keys .*vision_tower\.head\.weight",
        ),
        (lambda s: s["language_model.final_logits_bias"].add_(1.0), r"final_logits_bias is not zero"),
        (
            lambda s: s.update(
                {"language_model.lm_head.weight": torch.zeros_like(s["language_model.lm_head.weight"])}
            ),
            r"lm_head\.weight differs",
        ),
        (lambda s: s.update({"image_projection": torch.zeros(3, 3)}), r"image_projection has shape \(3, 3\)"),
    ],
)
def test_incomplete_or_unexpected_checkpoints_are_refused(
    legacy_dirs: dict[str, Path], tmp_path: Path, edit, message: str
) -> None:
    broken = _break(legacy_dirs["bin"], tmp_path, edit)
    with pytest.raises(RecipeError, match=message):
        native_checkpoint(str(broken))
    assert not list(
        cache_root().glob(f"broken-*/{CONVERTED_MARKER}")
    )  # nothing half-converted is left to load


def test_pickled_objects_in_bin_are_refused(legacy_dirs: dict[str, Path], tmp_path: Path) -> None:
    broken = tmp_path / "pickled"
    shutil.copytree(legacy_dirs["bin"], broken)
    torch.save(
        {"language_model.model.shared.weight": torch.zeros(2), "extra": object()},
        broken / "pytorch_model.bin",
    )
    with pytest.raises(RecipeError, match="not a weights-only PyTorch state dict"):
        native_checkpoint(str(broken))


def test_lora_adapter_on_original_names_is_converted(
    tmp_path: Path, legacy_dirs: dict[str, Path], tiny_model_dir: Path
) -> None:
    from peft import LoraConfig, get_peft_model

    native = Florence2ForConditionalGeneration.from_pretrained(tiny_model_dir)
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj", "qkv"], init_lora_weights=False)
    peft_model = get_peft_model(native, config)
    peft_model.save_pretrained(tmp_path / "native-adapter")
    AutoProcessor.from_pretrained(tiny_model_dir).save_pretrained(
        tmp_path / "native-adapter"
    )  # as the recipes do
    adapter = json.loads((tmp_path / "native-adapter" / "adapter_config.json").read_text())
    adapter["base_model_name_or_path"] = str(tiny_model_dir)
    (tmp_path / "native-adapter" / "adapter_config.json").write_text(json.dumps(adapter))
    # The same adapter as the original implementation's PEFT model would name it, on the legacy base.
    legacy_adapter = tmp_path / "legacy-adapter"
    legacy_adapter.mkdir()
    tensors = load_file(str(tmp_path / "native-adapter" / "adapter_model.safetensors"))
    renamed = {}
    for key, value in tensors.items():
        module, suffix = key.removeprefix("base_model.model.").split(".lora_")
        renamed[
            "base_model.model."
            + to_legacy_key(module + ".weight").removesuffix(".weight")
            + ".lora_"
            + suffix
        ] = value
    assert any(
        k.startswith("base_model.model.vision_tower.blocks.0.0.spatial_block.window_attn.fn.qkv")
        for k in renamed
    )
    save_file(renamed, str(legacy_adapter / "adapter_model.safetensors"))
    adapter.update(
        base_model_name_or_path=str(legacy_dirs["bin"]), target_modules=["q_proj", "v_proj", "fn.qkv"]
    )
    (legacy_adapter / "adapter_config.json").write_text(json.dumps(adapter))

    expected, _processor = load_for_inference(
        ModelArguments(model_name_or_path=str(tmp_path / "native-adapter"))
    )
    got, _ = load_for_inference(ModelArguments(model_name_or_path=str(legacy_adapter)))
    assert all(
        torch.equal(a, b)
        for a, b in zip(expected.state_dict().values(), got.state_dict().values(), strict=True)
    )

    adapter["modules_to_save"] = ["lm_head"]
    (legacy_adapter / "adapter_config.json").write_text(json.dumps(adapter))
    save_file(
        renamed
        | {"base_model.model.language_model.model.encoder.layers.0.fc1.lora_A.weight": torch.zeros(4, 64)},
        str(legacy_adapter / "adapter_model.safetensors"),
    )
    with pytest.raises(RecipeError, match="modules_to_save"):
        load_for_inference(ModelArguments(model_name_or_path=str(legacy_adapter)))


def run_script(monkeypatch: pytest.MonkeyPatch, script: str, *args: str) -> None:
    """`python recipes/<script> ARGS` in this process (a subprocess would spend most of its time importing)."""
    monkeypatch.setattr(sys, "argv", [script, *args])
    runpy.run_path(str(REPO_ROOT / "recipes" / script), run_name="__main__")


def test_convert_legacy_script_round_trips(
    legacy_dirs: dict[str, Path],
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "native"
    run_script(
        monkeypatch,
        "convert_legacy.py",
        "--model_name_or_path",
        str(legacy_dirs["safetensors"]),
        "--output_dir",
        str(out),
    )
    [line] = [r.getMessage() for r in caplog.records if r.name == "florence_recipes.models.legacy"]
    assert re.search(r"Converted original-layout \(remote-code\) Florence-2 .* 241 weight tensors", line)
    before, after = (
        load_file(str(tiny_model_dir / "model.safetensors")),
        load_file(str(out / "model.safetensors")),
    )
    assert sorted(before) == sorted(after) and all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(SystemExit) as exit_info:
        run_script(
            monkeypatch,
            "convert_legacy.py",
            "--model_name_or_path",
            str(out),
            "--output_dir",
            str(tmp_path / "x"),
        )
    assert exit_info.value.code == 1
    assert "not an original (remote-code) Florence-2 config" in capsys.readouterr().err


def test_legacy_checkpoint_evaluates_as_baseline_predicts_and_serves_in_the_demo(
    tmp_path: Path,
    fitted_model_dir: Path,
    docvqa_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """recipes/evaluate.py (--baseline_model_name_or_path), recipes/predict.py and the demo accept the original layout.

    The model is the tiny one fitted to the validation answers (non-empty, partly right answers), written in the
    original layout. Trained, its added embedding rows are no longer the mean ones the conversion gives back;
    that must not change a single generated token.
    """
    legacy = str(write_legacy_florence2(fitted_model_dir, tmp_path / "legacy-fitted"))
    run_script(
        monkeypatch, "evaluate.py", "--model_name_or_path", str(fitted_model_dir),
        "--baseline_model_name_or_path", legacy, "--dataset_name", str(docvqa_dir), "--split", "validation",
        "--output_dir", str(tmp_path / "eval"), "--max_eval_samples", "6", "--generation_max_length", "16",
        "--dataloader_num_workers", "0", "--per_device_eval_batch_size", "6",
    )  # fmt: skip
    ours = (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()
    baseline = (tmp_path / "eval" / "baseline" / "predictions.jsonl").read_text().splitlines()
    assert len(ours) == len(baseline) == 6
    # The baseline is the same weights in the original layout: the same answers.

    predictions = [json.loads(x)["prediction"] for x in ours]
    assert predictions == [json.loads(x)["prediction"] for x in baseline] and any(predictions)

    image = tmp_path / "doc.png"
    row = load_task_split(get_task("docvqa"), str(docvqa_dir), "validation")[0]
    row["image"].save(image)
    question = row["prompt"].removeprefix("<DocVQA>")
    answers = []
    for model in (str(fitted_model_dir), legacy):
        capsys.readouterr()
        run_script(monkeypatch, "predict.py", "--model_name_or_path", model, "--image", str(image),
                   "--question", question, "--num_beams", "1", "--max_new_tokens", "16")  # fmt: skip
        answers.append(capsys.readouterr().out)
    assert answers[0] == answers[1] and answers[0].strip()

    # The demo serves it: its answer function on what the demo loads from the original layout.
    demo = runpy.run_path(str(REPO_ROOT / "recipes" / "demo.py"))
    record = read_record(legacy)
    _, default = demo["task_choices"](record)
    model, processor = load_for_inference(ModelArguments(model_name_or_path=legacy))
    ask = demo["make_answer"](model, processor, record, max_new_tokens=16, num_beams=1)
    assert ask(row["image"], default, question) == (answers[0].strip(), None)


@pytest.mark.slow
def test_legacy_checkpoint_trains(tmp_path: Path, legacy_dirs: dict[str, Path], docvqa_dir: Path) -> None:
    """`accelerate launch recipes/docvqa.py --model_name_or_path <original layout>` fine-tunes and saves natively."""
    train = run_recipe_subprocess(
        "docvqa.py", "--config", "recipes/docvqa/smoke_documents.yaml", "--model_name_or_path", str(legacy_dirs["bin"]),
        "--dataset_name", str(docvqa_dir), "--output_dir", str(tmp_path / "trained"), "--num_train_epochs", "1",
        "--max_train_samples", "8", "--max_eval_samples", "4", "--dataloader_num_workers", "0",
    )  # fmt: skip
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    assert re.search(r"Converted original-layout \(remote-code\) Florence-2", train.stdout + train.stderr)
    assert (tmp_path / "trained" / "model.safetensors").is_file()
    assert not is_legacy_config(json.loads((tmp_path / "trained" / "config.json").read_text()))


@pytest.mark.slow
@pytest.mark.parametrize("size", ["base", "large"])
def test_release_sized_stand_in_and_its_legacy_layout(tmp_path: Path, size: str) -> None:
    """The built stand-in has the released parameter count; its original-layout copy converts back bit for bit."""
    native = build_random_florence2(tmp_path / "native", size=size)
    model = Florence2ForConditionalGeneration.from_pretrained(native)
    assert parameter_groups(model) == PARAMETER_GROUPS[size]
    legacy = write_legacy_florence2(native, tmp_path / "legacy", weights_format="safetensors")
    del model
    converted = Path(native_checkpoint(str(legacy)))
    before, after = (
        load_file(str(native / "model.safetensors")),
        load_file(str(converted / "model.safetensors")),
    )
    assert sorted(before) == sorted(after) and all(torch.equal(before[k], after[k]) for k in before)


def test_build_legacy_fixture_is_kept_by_offline_fixture_builder(tmp_path: Path, docvqa_dir: Path) -> None:
    """A smoke recipe pointed at a legacy fixture uses it; `build_offline_fixtures` must not rebuild it as native."""
    from florence_recipes.builders import build_offline_fixtures

    legacy = build_legacy_florence2(tmp_path / "legacy", size="tiny")
    build_offline_fixtures(str(legacy), str(docvqa_dir), "docvqa")
    assert is_legacy_config(json.loads((legacy / "config.json").read_text()))
    assert build_legacy_florence2(tmp_path / "legacy", size="tiny") == legacy  # idempotent


def test_fine_tune_tokenizer_with_florence_tokens_saved_converts_alike(
    legacy_dirs: dict[str, Path], tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Fine-tunes saved by the original processor already hold the 1,024 added tokens; releases do not."""
    from transformers import BartTokenizer

    folder = tmp_path / "fine-tune"
    shutil.copytree(legacy_dirs["safetensors"], folder)
    tokenizer = BartTokenizer.from_pretrained(folder)
    tokenizer.add_special_tokens({"additional_special_tokens": FLORENCE_TOKENS})
    for name in ("vocab.json", "merges.txt"):
        (folder / name).unlink()
    tokenizer.save_pretrained(folder)
    converted = AutoProcessor.from_pretrained(native_checkpoint(str(folder))).tokenizer
    native = AutoProcessor.from_pretrained(tiny_model_dir).tokenizer
    assert converted.get_vocab() == native.get_vocab() and converted.all_special_ids == native.all_special_ids

    # Tokens at other ids than the model was trained with would silently scramble every box: refused.
    tokenizer = BartTokenizer.from_pretrained(legacy_dirs["safetensors"])
    tokenizer.add_special_tokens({"additional_special_tokens": FLORENCE_TOKENS[::-1]})
    tokenizer.save_pretrained(folder)
    with pytest.raises(RecipeError, match="not at consecutive ids"):
        native_checkpoint(str(folder))
