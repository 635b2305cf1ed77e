"""Seq2Seq data collator for Florence-2: images + prompts through the processor, targets as masked labels.

It runs inside DataLoader worker processes (`dataloader_num_workers`), so image decoding, resizing,
normalisation and tokenisation happen off the training loop's process, unlike the seed blog's loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image, ImageOps
from transformers import BatchEncoding, ProcessorMixin

if TYPE_CHECKING:  # speed.py imports this module
    from florence_recipes.speed import ImageFeatureCache

IGNORE_INDEX = -100  # positions the cross-entropy loss skips


def to_rgb(image: Image.Image) -> Image.Image:
    """Upright RGB whatever the source mode: EXIF rotation applied, transparency flattened onto white."""
    image = ImageOps.exif_transpose(image)
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: rescale to 8 bits instead of clipping everything above 255 to white.
        extrema = image.getextrema()
        high = max(int(extrema[1]), 1)
        image = image.point(lambda v: v * 255.0 / high, mode="F").convert("L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


@dataclass
class Florence2Collator:
    """Turns standard rows (`image`, `prompt`, `target`) into `input_ids`, `pixel_values` and `labels`.

    Labels are the tokenised targets `<s> answer </s>`; padded positions are set to -100 (the seed blog
    trained on its padding). The model builds `decoder_input_ids` itself by shifting the labels right
    behind `decoder_start_token_id` (</s>, BART's convention), which is what generation starts from too.

    Two training-only layouts (see `florence_recipes.speed`), both keyed by the rows' `image_id`:
    `dedup_images` emits `pixel_values` once per unique image plus `image_index` (question -> its image's
    position in `pixel_values`); `feature_cache` emits each question's cached `image_features` instead of
    pixels, looked up here in the DataLoader workers, so cached images are never decoded or resized.
    """

    processor: ProcessorMixin
    max_target_length: int = 128
    dedup_images: bool = False
    feature_cache: ImageFeatureCache | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        prompts = [f["prompt"] for f in features]
        if self.feature_cache is not None:
            batch = self._encode_prompts(prompts)
            batch["image_features"] = self.feature_cache.lookup([f["image_id"] for f in features])
        elif self.dedup_images:
            first_images: dict[str, Any] = {}
            for f in features:
                first_images.setdefault(f["image_id"], f["image"])
            position = {image_id: i for i, image_id in enumerate(first_images)}
            batch = self._encode_prompts(prompts)
            batch["pixel_values"] = self.processor.image_processor(
                [to_rgb(image) for image in first_images.values()], return_tensors="pt"
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
