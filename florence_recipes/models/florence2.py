"""What the Florence-2 release is, as the native classes and the original checkpoints both need it: the tokens its
processor adds to BART's vocabulary, the vocabulary and embedding sizes, the post-processor's parsing rules,
and the number of image tokens per image. The offline builders and the legacy conversion build on these."""

from __future__ import annotations

from typing import Any

import torch

from florence_recipes.data.boxes import NUM_BINS  # <loc_0> ... <loc_999>

# The tokens the released processor adds to BART's vocabulary, in its order, as additional *special* tokens
# (microsoft/Florence-2-base `processing_florence2.py`, `Florence2Processor.__init__`, `tokens_to_add`; the
# native conversion script, transformers `models/florence2/convert_florence2_original_pytorch_to_hf.py`,
# keeps that tokenizer and appends `<image>`). With BART's 50,265 entries this gives the released 51,289:
# <od> is 50265, <loc_0> 50269, <loc_999> 51268, <and> 51288, and the native `<image>` is 51289 (the default
# `image_token_id` of transformers' `Florence2Config`).
TASK_TOKENS_HEAD = ["<od>", "</od>", "<ocr>", "</ocr>"]
TASK_TOKENS_TAIL = [
    "<cap>", "</cap>", "<ncap>", "</ncap>", "<dcap>", "</dcap>", "<grounding>", "</grounding>", "<seg>", "</seg>",
    "<sep>", "<region_cap>", "</region_cap>", "<region_to_desciption>", "</region_to_desciption>", "<proposal>",
    "</proposal>", "<poly>", "</poly>", "<and>",
]  # fmt: skip
TASK_TOKENS = TASK_TOKENS_HEAD + TASK_TOKENS_TAIL
FLORENCE_TOKENS = TASK_TOKENS_HEAD + [f"<loc_{i}>" for i in range(NUM_BINS)] + TASK_TOKENS_TAIL
BART_VOCAB_SIZE = 50265  # facebook/bart-base vocab.json: <s> 0, <pad> 1, </s> 2, <unk> 3, ..., <mask> 50264
RELEASED_VOCAB_SIZE = BART_VOCAB_SIZE + len(FLORENCE_TOKENS)  # 51,289: text_config.vocab_size of the release
IMAGE_TOKEN = "<image>"
# The native conversion pads the embedding matrix to a multiple of 64 after adding <image>: 51,290 -> 51,328.
EMBEDDING_PAD_MULTIPLE = 64

# Parsing rules of the released processors: `post_process_generation` refuses any parse type missing here
# (boxes for <OD>, quad boxes for <OCR_WITH_REGION>, ...).
POST_PROCESSOR_CONFIG: dict[str, dict[str, Any]] = {
    "ocr": {
        "pattern": r"(.+?)<loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)>",
        "area_threshold": 0.0,
    },
    "phrase_grounding": {"banned_grounding_tokens": ["the image"]},
    "pure_text": {},
    "description_with_bboxes": {},
    "description_with_polygons": {},
    "polygons": {},
    "bboxes": {},
    "description_with_bboxes_or_polygons": {},
}


def image_seq_length(image_size: int, num_stages: int = 4) -> int:
    """Number of image tokens: one per cell of the last DaViT stage (stride 32) plus one pooled token."""
    side = image_size // 2 ** (num_stages + 1)
    return side * side + 1


@torch.no_grad()
def fill_new_embedding_rows(weight: torch.Tensor, first_new_row: int) -> None:
    """Set rows `first_new_row:` of a (tied) embedding matrix to the mean of the rows before them.

    The LM head shares this matrix, so a mean row's logit is the mean of the old rows' logits: never above the
    best old token's, so greedy decoding never picks an added row and generates what it did before the rows
    were added (a random row, as `resize_token_embeddings` gives, could win). Beam search scores log-softmax
    values, whose normaliser now also holds the added rows: its ranking matches the original's in practice
    (the mean logit is far below the top ones) but is not guaranteed to, as with any padded vocabulary.
    """
    weight[first_new_row:] = weight[:first_new_row].mean(dim=0, dtype=torch.float32).to(weight.dtype)


def padded_vocab_size(num_tokens: int) -> int:
    return -(-num_tokens // EMBEDDING_PAD_MULTIPLE) * EMBEDDING_PAD_MULTIPLE
