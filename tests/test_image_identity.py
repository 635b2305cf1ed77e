"""Image identity comes from the pixels (issue 15): an id column such as DocVQA's `docId` is never trusted to
say that two rows show the same picture. Training with image grouping, de-duplicated vision and the feature
cache must pair every question with its own image even when two different pages share one `docId`."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
import torch
from conftest import sources_of
from datasets import load_dataset
from PIL import Image

from florence_recipes.configs.model import ModelArguments
from florence_recipes.configs.training import FlorenceTrainingArguments
from florence_recipes.data.collator import Florence2Collator
from florence_recipes.data.loading import load_task_split
from florence_recipes.data.tasks import get_task
from florence_recipes.models.loading import apply_training_mode, load_model
from florence_recipes.training.trainer import FlorenceTrainer

BATCH = 5  # not a multiple of the 3 questions per page


def png(color: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def clashing_docvqa(tmp_path_factory: pytest.TempPathFactory, docvqa_dir: Path) -> Path:
    """The synthetic DocVQA train split with every page given the same `docId` (16 different pages, one id)
    and a question number appended, so that each question names exactly one row."""
    folder = tmp_path_factory.mktemp("clashing-docvqa")
    rows = load_dataset(str(docvqa_dir), split="train")
    rows = rows.map(
        lambda row, index: {"docId": 7, "question": f"{row['question']} (#{index})"}, with_indices=True
    )
    rows.to_parquet(str(folder / "train.parquet"))
    return folder


def test_docvqa_image_id_is_a_digest_of_the_image_not_the_doc_id(clashing_docvqa: Path) -> None:
    rows = load_task_split(get_task("docvqa"), str(clashing_docvqa), "train")
    raw = load_dataset(str(clashing_docvqa), split="train").cast_column(
        "image", get_task("docvqa").image_feature
    )
    expected = [hashlib.sha1(image["bytes"]).hexdigest() for image in raw["image"]]
    assert rows["image_id"] == expected
    assert len(set(rows["image_id"])) == 16 and set(raw["docId"]) == {7}


def test_path_images_are_keyed_by_their_bytes(tmp_path: Path) -> None:
    """Two files with the same picture are one image; one file name in two folders is two images."""
    for folder, colors in (("a", ("red", "blue")), ("b", ("red", "green"))):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.png").write_bytes(png(colors[0]))
        (tmp_path / folder / "y.png").write_bytes(png(colors[1]))
    lines = [
        f'{{"image": "{f}", "question": "q{i}", "answer": "a"}}'
        for i, f in enumerate(["a/x.png", "b/x.png", "a/y.png", "b/y.png"])
    ]
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    ids = load_task_split(get_task("vqa"), str(tmp_path), "train")["image_id"]
    assert ids[0] == ids[1] == hashlib.sha1(png("red")).hexdigest()  # same pixels in two files
    assert len({ids[0], ids[2], ids[3]}) == 3  # same name, different pictures


def test_cauldron_rows_with_the_same_picture_share_an_id(tmp_path: Path) -> None:
    convert = get_task("cauldron").convert_batch
    from florence_recipes.data.tasks import SourceContext

    red, blue = {"bytes": png("red"), "path": None}, {"bytes": png("blue"), "path": None}
    turns = [[{"user": "q", "assistant": "a", "source": "s"}]] * 3
    out = convert(
        {"images": [[red], [blue], [red]], "texts": turns}, [0, 1, 2], SourceContext("ai2d", "train")
    )
    assert (
        out["image_id"][0]
        == out["image_id"][2]
        == hashlib.sha1(red["bytes"]).hexdigest()
        != out["image_id"][1]
    )


def own_features(model, processor, rows, prompts: list[str]) -> torch.Tensor:
    """Image features of each prompt's own row's image, computed without any grouping or cache."""
    by_prompt = {row["prompt"]: row for row in rows}
    pixels = processor.image_processor(
        [by_prompt[p]["image"].convert("RGB") for p in prompts], return_tensors="pt"
    )
    with torch.no_grad():
        return model.get_image_features(pixel_values=pixels["pixel_values"]).pooler_output


def batch_prompts(processor, batch: dict[str, torch.Tensor]) -> list[str]:
    """The prompts of a collated batch, read back from its token ids (no task token rewriting for <DocVQA>)."""
    texts = processor.tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True)
    return [text.strip() for text in texts]


@pytest.mark.parametrize(
    ("mode", "speed"),
    [
        ("full", {"group_by_image": True, "dedup_vision": True}),
        ("frozen_vision", {"group_by_image": True, "feature_cache": "memory"}),
    ],
    ids=["dedup_vision", "feature_cache"],
)
def test_every_question_gets_its_own_pages_features(
    tiny_model_dir: Path, processor, clashing_docvqa: Path, tmp_path: Path, mode: str, speed: dict
) -> None:
    rows = load_task_split(get_task("docvqa"), str(clashing_docvqa), "train")
    model_args = ModelArguments(model_name_or_path=str(tiny_model_dir), training_mode=mode)
    torch.manual_seed(0)
    model = apply_training_mode(load_model(model_args), model_args)
    model.eval()
    args = FlorenceTrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=BATCH, dataloader_num_workers=0,
        report_to="none", use_cpu=True, **speed,
    )  # fmt: skip
    trainer = FlorenceTrainer(
        model=model, args=args, processor=processor, sources=sources_of("docvqa"), train_dataset=rows
    )
    # The prompts as the collator tokenises them, to map each question of a batch back to its row.
    prompts = batch_prompts(processor, Florence2Collator(processor)(list(rows)))
    by_text = {text: row for text, row in zip(prompts, rows, strict=True)}
    checked = 0
    for batch in trainer.get_train_dataloader():
        texts = batch_prompts(processor, batch)
        with torch.no_grad():
            received = trainer._image_features(model, dict(batch))  # what the language model is given
        expected = own_features(
            model, processor, [by_text[t] for t in texts], [by_text[t]["prompt"] for t in texts]
        )
        for question, got, want in zip(texts, received, expected, strict=True):
            torch.testing.assert_close(got.float(), want, rtol=1e-4, atol=1e-5, msg=question)
            checked += 1
    assert checked == len(rows) == 48
