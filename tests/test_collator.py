"""Florence2Collator: label masking, tokenizer round trip, decoder start, image modes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText

from florence_recipes.data.collator import IGNORE_INDEX, Florence2Collator
from florence_recipes.data.images import to_rgb

TARGETS = ["45.20", "Acme Corporation Ltd., 12 Main Street", "", "12/03/1998 – ünïcödé 東京"]  # noqa: RUF001


def make_features(targets: list[str]) -> list[dict]:
    image = Image.new("RGB", (96, 64), "white")
    return [
        {"image": image, "prompt": f"<DocVQA>What is field {i}?", "target": t, "id": str(i), "answers": [t]}
        for i, t in enumerate(targets)
    ]


def test_padding_positions_and_only_those_are_ignored(processor) -> None:
    batch = Florence2Collator(processor, max_target_length=64)(make_features(TARGETS))
    labels = batch["labels"]
    tokenizer = processor.tokenizer
    for row, target in zip(labels, TARGETS, strict=True):
        expected = tokenizer(target)["input_ids"]  # <s> ... </s>, unpadded
        n = len(expected)
        assert row[:n].tolist() == expected  # real tokens, including </s>, are kept
        assert (row[n:] == IGNORE_INDEX).all()  # every padded position is ignored
    # The pad id never reaches the loss: padding is -100, and no real token is -100.
    assert not (labels == tokenizer.pad_token_id).any()
    assert (labels == IGNORE_INDEX).sum() == sum(
        labels.shape[1] - len(tokenizer(t)["input_ids"]) for t in TARGETS
    )


def test_prompt_and_answer_round_trip_through_the_tokenizer(processor) -> None:
    batch = Florence2Collator(processor)(make_features(TARGETS))
    tokenizer = processor.tokenizer
    decoded = tokenizer.batch_decode(
        batch["labels"].masked_fill(batch["labels"] == IGNORE_INDEX, tokenizer.pad_token_id),
        skip_special_tokens=True,
    )
    assert decoded == TARGETS
    prompt = tokenizer.decode(batch["input_ids"][0], skip_special_tokens=True)
    assert prompt == "<DocVQA>What is field 0?"
    # The image placeholders come first, one per image token of the vision tower.
    n_image_tokens = processor.image_processor.image_seq_length
    assert (batch["input_ids"][:, :n_image_tokens] == tokenizer.image_token_id).all()
    assert batch["pixel_values"].shape == (len(TARGETS), 3, 128, 128)


def test_targets_longer_than_budget_are_truncated_but_keep_eos(processor) -> None:
    batch = Florence2Collator(processor, max_target_length=6)(
        make_features(["one two three four five six seven"])
    )
    assert batch["labels"].shape[1] == 6
    assert batch["labels"][0, -1].item() == processor.tokenizer.eos_token_id


def test_decoder_starts_from_decoder_start_token(processor, tiny_model_dir: Path) -> None:
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    batch = Florence2Collator(processor)(make_features(TARGETS[:2]))
    captured = {}
    hook = model.model.language_model.decoder.register_forward_pre_hook(
        lambda module, args, kwargs: captured.update(ids=kwargs["input_ids"]), with_kwargs=True
    )
    with torch.no_grad():
        loss = model(**batch).loss
    hook.remove()
    start = model.config.text_config.decoder_start_token_id
    labels = batch["labels"]
    decoder_ids = captured["ids"]
    assert (decoder_ids[:, 0] == start).all()
    # Teacher forcing: the decoder sees the labels shifted right, with -100 replaced by the pad id.
    shifted = labels[:, :-1].masked_fill(labels[:, :-1] == IGNORE_INDEX, processor.tokenizer.pad_token_id)
    assert torch.equal(decoder_ids[:, 1:], shifted)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA", "CMYK", "I;16", "1"])
def test_images_of_any_mode_become_rgb(mode: str) -> None:
    image = Image.new("RGB", (20, 10), (200, 100, 50)).convert(mode)
    if mode == "I;16":
        image = Image.fromarray(np.full((10, 20), 40000, dtype=np.uint16))
    out = to_rgb(image)
    assert out.mode == "RGB" and out.size == (20, 10)
    if mode == "I;16":
        assert np.asarray(out).min() > 200  # rescaled to 8 bits, not clipped or wrapped


def test_transparent_pixels_become_white() -> None:
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert np.asarray(to_rgb(image)).min() == 255


def test_exif_rotation_is_applied() -> None:
    image = Image.new("RGB", (30, 10), "white")
    exif = image.getexif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    rotated = Image.open(_save_jpeg(image, exif))
    assert to_rgb(rotated).size == (10, 30)


def _save_jpeg(image: Image.Image, exif: Image.Exif) -> io.BytesIO:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    buffer.seek(0)
    return buffer
