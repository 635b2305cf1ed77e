"""Seq2Seq data collator for Florence-2: images + prompts through the processor, targets as masked labels.

It runs inside DataLoader worker processes (`dataloader_num_workers`), so image decoding, resizing,
normalisation and tokenisation happen off the training loop's process, unlike the seed blog's loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from transformers import BatchEncoding, ProcessorMixin

from florence_recipes.data.images import image_groups, to_rgb
from florence_recipes.errors import RecipeError

IGNORE_INDEX = -100  # positions the cross-entropy loss skips


class FeatureLookup(Protocol):
    """What the collator needs of a feature cache (`florence_recipes.training.speed.ImageFeatureCache`): each
    question's image features, by the rows' `image_id`."""

    def lookup(self, image_ids: Sequence[str]) -> torch.Tensor: ...


@dataclass
class Florence2Collator:
    """Turns standard rows (`image`, `prompt`, `target`) into `input_ids`, `pixel_values` and `labels`.

    Labels are the tokenised targets `<s> answer </s>`; padded positions are set to -100 (the seed blog
    trained on its padding). The model builds `decoder_input_ids` itself by shifting the labels right
    behind `decoder_start_token_id` (</s>, BART's convention), which is what generation starts from too.

    Two layouts of the speed switches (see `florence_recipes.training.speed`), both keyed by the rows' `image_id`:
    `dedup_images` (training and evaluation batches) emits `pixel_values` once per unique image plus
    `image_index` (question -> its image's position in `pixel_values`). Rows without an `image` column (the
    training set once `FlorenceTrainer` has cached its features) get each question's cached `image_features`
    from `feature_cache` instead of pixels, looked up here in the DataLoader workers, so cached images are
    never decoded or resized.
    """

    processor: ProcessorMixin
    max_target_length: int = 128
    dedup_images: bool = False
    feature_cache: FeatureLookup | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        prompts = [f["prompt"] for f in features]
        if "image" not in features[0]:
            if self.feature_cache is None:
                raise RecipeError("rows without images need the feature cache (feature_cache: memory|disk)")
            batch = self._encode_prompts(prompts)
            batch["image_features"] = self.feature_cache.lookup([f["image_id"] for f in features])
        elif self.dedup_images:
            groups = image_groups([f["image_id"] for f in features])
            position = {image_id: i for i, image_id in enumerate(groups)}
            batch = self._encode_prompts(prompts)
            batch["pixel_values"] = self.processor.image_processor(
                [to_rgb(features[rows[0]]["image"]) for rows in groups.values()], return_tensors="pt"
            )["pixel_values"]
            batch["image_index"] = torch.tensor([position[f["image_id"]] for f in features])
        else:
            images = [to_rgb(f["image"]) for f in features]
            batch = self.processor(text=prompts, images=images, return_tensors="pt", padding="longest")
        targets = self.processor.tokenizer(
            [f["target"] for f in features],
            padding="longest",
            truncation=True,
            max_length=self.max_target_length,
            return_tensors="pt",
        )
        batch["labels"] = targets["input_ids"].masked_fill(targets["attention_mask"] == 0, IGNORE_INDEX)
        return batch

    def _encode_prompts(self, prompts: list[str]) -> BatchEncoding:
        """The `input_ids` / `attention_mask` that `processor(text=prompts, images=...)` returns, without pixels.

        Florence-2's layout is image placeholders, <s>, prompt, </s>; the processor's text-only call still
        rewrites task tokens (e.g. <OCR>) into their natural-language prompts.
        """
        tokenizer = self.processor.tokenizer
        prefix = [self.processor.image_token_id] * self.processor.num_image_tokens + [tokenizer.bos_token_id]
        prompt_ids = self.processor(text=prompts)["input_ids"]
        return tokenizer.pad(
            {"input_ids": [prefix + ids + [tokenizer.eos_token_id] for ids in prompt_ids]},
            padding="longest",
            return_tensors="pt",
        )
