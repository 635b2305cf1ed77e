"""Image de-duplication: the image-grouping sampler, the de-duplicating collator and the vision-once forward."""

from __future__ import annotations

import itertools
from pathlib import Path

import torch
from conftest import sources_of

from florence_recipes.configs.model import ModelArguments
from florence_recipes.configs.training import FlorenceTrainingArguments
from florence_recipes.data.collator import Florence2Collator
from florence_recipes.data.loading import column_values
from florence_recipes.models.loading import apply_training_mode, load_model
from florence_recipes.training.speed import ImageGroupedSampler
from florence_recipes.training.trainer import FlorenceTrainer

BATCH = 7  # not a multiple of 3 questions per image: a batch also holds part of an image's questions


def make_trainer(tiny_model_dir: Path, rows, processor, tmp_path: Path, **speed) -> FlorenceTrainer:
    model_args = ModelArguments(model_name_or_path=str(tiny_model_dir), training_mode="full")
    torch.manual_seed(0)
    model = apply_training_mode(load_model(model_args), model_args)
    args = FlorenceTrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=BATCH,
        dataloader_num_workers=0,
        report_to="none",
        use_cpu=True,
        **speed,
    )
    return FlorenceTrainer(
        model=model,
        args=args,
        processor=processor,
        sources=sources_of("docvqa"),
        train_dataset=rows,
    )


def test_sampler_keeps_each_images_questions_together_and_reshuffles_per_epoch() -> None:
    image_ids = [f"doc{i % 5}" for i in range(17)]  # interleaved in the dataset: 5 images, 3-4 questions each
    sampler = ImageGroupedSampler(image_ids, seed=3)
    order = list(sampler)
    assert sorted(order) == list(range(17))  # every question exactly once
    runs = [image_ids[i] for i in order]
    # Each image's questions form one consecutive run: 5 runs, one per image.
    changes = sum(a != b for a, b in itertools.pairwise(runs))
    assert changes == 4
    assert list(sampler) == order  # same epoch, same order
    sampler.set_epoch(1)
    assert list(sampler) != order
    assert len(sampler) == 17


def test_dedup_collator_matches_the_plain_collator(processor, train_rows) -> None:
    features = [train_rows[i] for i in range(BATCH)]
    plain = Florence2Collator(processor)(features)
    dedup = Florence2Collator(processor, dedup_images=True)(features)
    for key in ("input_ids", "attention_mask", "labels"):
        assert torch.equal(plain[key], dedup[key]), key
    # One pixel tensor per unique image, expanded back by image_index to exactly the plain batch.
    assert dedup["pixel_values"].shape[0] == len({f["image_id"] for f in features}) == 3
    assert dedup["image_index"].tolist() == [0, 0, 0, 1, 1, 1, 2]
    assert torch.equal(dedup["pixel_values"][dedup["image_index"]], plain["pixel_values"])


def test_vision_once_loss_and_gradients_equal_the_plain_path(
    tiny_model_dir: Path, processor, train_rows, tmp_path: Path
) -> None:
    trainer = make_trainer(
        tiny_model_dir, train_rows, processor, tmp_path, group_by_image=True, dedup_vision=True
    )
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["pixel_values"].shape[0] < BATCH  # the vision tower really sees fewer images
    # The same questions through the plain collator: the grouped sampler's first batch.
    indices = list(trainer._get_train_sampler(train_rows))[:BATCH]
    plain = Florence2Collator(processor)([train_rows[i] for i in indices])
    assert torch.equal(plain["input_ids"], batch["input_ids"])

    model = trainer.model
    model.train()
    plain_loss = model(**plain).loss
    plain_loss.backward()
    plain_grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    dedup_loss = trainer.compute_loss(model, batch)
    dedup_loss.backward()

    torch.testing.assert_close(dedup_loss, plain_loss, rtol=1e-6, atol=1e-6)
    vision_grads = [name for name in plain_grads if "vision_tower" in name]
    assert vision_grads  # full mode: the tower's gradients flow through the expanded features too
    for name, param in model.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(param.grad, plain_grads[name], rtol=1e-5, atol=1e-7, msg=name)


def test_grouped_batches_hold_few_images(tiny_model_dir: Path, processor, train_rows, tmp_path: Path) -> None:
    grouped = make_trainer(
        tiny_model_dir, train_rows, processor, tmp_path, group_by_image=True, dedup_vision=True
    )
    image_ids = column_values(train_rows, "image_id")
    batches = list(grouped.get_train_dataloader())
    total_images = sum(batch["pixel_values"].shape[0] for batch in batches)
    # 48 questions about 16 images: in groups of 3, batches of 7 split at most one image per batch boundary.
    assert len(image_ids) == 48 and len(set(image_ids)) == 16
    assert total_images <= 16 + len(batches) - 1
