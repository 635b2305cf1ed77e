"""Seq2Seq data collator for Florence-2: images + prompts through the processor, targets as masked labels.

It runs inside DataLoader worker processes (`dataloader_num_workers`), so image decoding, resizing,
normalisation and tokenisation happen off the training loop's process, unlike the seed blog's loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image, ImageOps
from transformers import ProcessorMixin

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
    """

    processor: ProcessorMixin
    max_target_length: int = 128

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        images = [to_rgb(f["image"]) for f in features]
        prompts = [f["prompt"] for f in features]
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
