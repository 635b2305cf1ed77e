"""Frozen-vision feature cache: same loss as the uncached path, reuse on disk, invalidation, worker pickling."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from conftest import sources_of
from transformers import AutoConfig, AutoProcessor, Florence2ForConditionalGeneration

from florence_recipes.configs.model import ModelArguments
from florence_recipes.configs.training import FlorenceTrainingArguments
from florence_recipes.data.collator import Florence2Collator
from florence_recipes.errors import RecipeError
from florence_recipes.models.loading import apply_training_mode, load_model
from florence_recipes.training.speed import build_feature_cache
from florence_recipes.training.trainer import FlorenceTrainer

BATCH = 6


def frozen_model(tiny_model_dir: Path, mode: str = "frozen_vision"):
    model_args = ModelArguments(model_name_or_path=str(tiny_model_dir), training_mode=mode)
    torch.manual_seed(0)
    return apply_training_mode(load_model(model_args), model_args)


def build(model, processor, rows, tmp_path: Path, dtype: torch.dtype = torch.float32, storage: str = "disk"):
    return build_feature_cache(
        model, processor.image_processor, rows, storage=storage, dtype=dtype, device="cpu", cache_dir=tmp_path
    )


@pytest.mark.parametrize("storage", ["memory", "disk"])
def test_cached_loss_and_gradients_equal_the_uncached_path(
    tiny_model_dir: Path, processor, train_rows, tmp_path: Path, storage: str
) -> None:
    args = FlorenceTrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=BATCH,
        dataloader_num_workers=0,
        report_to="none",
        use_cpu=True,
        feature_cache=storage,
        train_sampling_strategy="sequential",  # so that the plain batch below holds the same rows
    )
    model = frozen_model(tiny_model_dir)
    trainer = FlorenceTrainer(
        model=model,
        args=args,
        processor=processor,
        sources=sources_of("docvqa"),
        train_dataset=train_rows,
    )
    cache = trainer.prepare_feature_cache()
    assert len(cache.rows) == 16 and cache.features.dtype == torch.float32  # one row per unique image
    batch = next(iter(trainer.get_train_dataloader()))
    assert "pixel_values" not in batch and batch["image_features"].shape == (BATCH, 17, 64)
    plain = Florence2Collator(processor)([train_rows[i] for i in range(BATCH)])

    model.train()  # as in training: the frozen tower's features do not depend on the mode
    plain_loss = model(**plain).loss
    plain_loss.backward()
    plain_grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    cached_loss = trainer.compute_loss(model, batch)
    cached_loss.backward()

    torch.testing.assert_close(cached_loss, plain_loss, rtol=1e-6, atol=1e-6)
    assert not any("vision_tower" in name for name in plain_grads)
    for name, param in model.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(param.grad, plain_grads[name], rtol=1e-5, atol=1e-7, msg=name)


def test_frozen_tower_is_deterministic_in_train_mode(tiny_model_dir: Path) -> None:
    # The tiny model has no stochastic depth; give it some, as the released base/large configs have (0.1).
    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.vision_config.drop_path_rate = 0.5
    pixels = torch.randn(4, 3, 128, 128)

    def train_mode_features(model) -> torch.Tensor:
        model.train()
        with torch.no_grad():
            return model.get_image_features(pixel_values=pixels).pooler_output

    torch.manual_seed(0)
    raw = Florence2ForConditionalGeneration(config)
    torch.manual_seed(1)
    first = train_mode_features(raw)
    assert not torch.allclose(first, train_mode_features(raw))  # stochastic depth is active in train mode
    frozen = apply_training_mode(
        raw, ModelArguments(model_name_or_path="unused", training_mode="frozen_vision")
    )
    frozen.eval()
    with torch.no_grad():
        expected = frozen.get_image_features(pixel_values=pixels).pooler_output
    torch.testing.assert_close(train_mode_features(frozen), expected, rtol=0, atol=0)


def test_disk_cache_is_reused_and_invalidated(
    tiny_model_dir: Path, processor, train_rows, tmp_path: Path
) -> None:
    model = frozen_model(tiny_model_dir)
    first = build(model, processor, train_rows, tmp_path)
    data_file = tmp_path / "features.bin"
    assert (tmp_path / "meta.json").is_file() and data_file.stat().st_size == 16 * 17 * 64 * 4

    # Unchanged model, processor, dtype and data: read back, the vision tower never runs.
    calls = []
    original = model.model.get_image_features
    model.model.get_image_features = lambda *a, **k: calls.append(1) or original(*a, **k)
    reused = build(model, processor, train_rows, tmp_path)
    assert calls == [] and torch.equal(reused.features, first.features) and reused.rows == first.rows

    # Each change rebuilds: dtype, image size, weights, data.
    bf16 = build(model, processor, train_rows, tmp_path, dtype=torch.bfloat16)
    assert len(calls) > 0 and bf16.features.dtype == torch.bfloat16
    assert data_file.stat().st_size == 16 * 17 * 64 * 2
    torch.testing.assert_close(bf16.features.float(), first.features, rtol=1e-2, atol=1e-2)

    calls.clear()
    smaller = AutoProcessor.from_pretrained(tiny_model_dir)
    smaller.image_processor.size = {"height": 96, "width": 96}
    smaller.image_processor.image_seq_length = 10  # (96 / 32)^2 + 1
    resized = build(model, smaller, train_rows, tmp_path)
    assert len(calls) > 0 and resized.features.shape == (16, 10, 64)

    build(model, processor, train_rows, tmp_path)  # back to the original
    calls.clear()
    with torch.no_grad():
        model.model.multi_modal_projector.image_projection.weight.mul_(2)
    doubled = build(model, processor, train_rows, tmp_path)
    assert len(calls) > 0 and not torch.allclose(doubled.features, first.features)

    calls.clear()
    fewer = build(model, processor, train_rows.select(range(30)), tmp_path)
    assert len(calls) > 0 and len(fewer.rows) == 10


def test_disk_cache_travels_to_workers_as_a_path(
    tiny_model_dir: Path, processor, train_rows, tmp_path: Path
) -> None:
    cache = build(frozen_model(tiny_model_dir), processor, train_rows, tmp_path, dtype=torch.bfloat16)
    payload = pickle.dumps(cache)
    assert len(payload) < cache.features.numel()  # not a copy of the features
    copy = pickle.loads(payload)
    first, second = list(cache.rows)[:2]
    ids = [second, first, second]
    assert torch.equal(copy.lookup(ids), cache.lookup(ids)) and copy.lookup(ids).dtype == torch.bfloat16


def test_cache_refuses_a_trainable_vision_tower(
    tiny_model_dir: Path, processor, train_rows, tmp_path: Path
) -> None:
    with pytest.raises(RecipeError, match="frozen vision tower"):
        build(frozen_model(tiny_model_dir, "full"), processor, train_rows, tmp_path, storage="memory")
