"""Build a random-initialised *native* Florence-2 + processor offline, saved as a normal model folder.

The folder loads with `AutoModelForImageTextToText.from_pretrained(path)` / `AutoProcessor.from_pretrained(path)`
exactly like `florence-community/Florence-2-base`, so tests and offline smoke runs exercise the same code path
as a GPU user fine-tuning the real checkpoint. Speed does not depend on weight values, so the `base` and
`large` architectures (taken from the released checkpoints' configs) also serve the benchmark.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import (
    AddedToken,
    BartConfig,
    BartTokenizer,
    CLIPImageProcessor,
    Florence2Config,
    Florence2ForConditionalGeneration,
    Florence2Processor,
    Florence2VisionConfig,
    GenerationConfig,
)

logger = logging.getLogger(__name__)

BUILD_MARKER = ".florence_recipes_build.json"
# Bump when the built files change (2: processor with post_processor_config), so older builds are rebuilt.
BUILD_VERSION = 2
NUM_LOCATION_BINS = 1000  # Florence-2 quantises coordinates into 1000 bins: <loc_0> … <loc_999>
# Florence-2's own task / region tokens, present in the released tokenizer.
TASK_TOKENS = [
    "<od>", "</od>", "<ocr>", "</ocr>", "<cap>", "</cap>", "<dcap>", "</dcap>", "<ncap>", "</ncap>",
    "<grounding>", "</grounding>", "<seg>", "</seg>", "<poly>", "</poly>", "<sep>", "<region_cap>",
    "</region_cap>", "<region_to_desciption>", "</region_to_desciption>", "<proposal>", "</proposal>",
    "<and>",
]  # fmt: skip

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

# Architectures of the released checkpoints (vision: DaViT; text: BART-style encoder-decoder).
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "tiny": {
        "vision": {
            "embed_dim": [16, 32, 48, 64],
            "depths": [1, 1, 1, 1],
            "num_heads": [1, 2, 3, 4],
            "num_groups": [1, 2, 3, 4],
            "window_size": 4,
            "drop_path_rate": 0.0,
        },
        "text": {"d_model": 64, "layers": 2, "heads": 4, "ffn_dim": 128},
        "image_size": 128,
    },
    # The tiny architecture at 64 px: 5 image tokens instead of 17 and a 4x cheaper vision tower, for the
    # learn recipe (recipes/docvqa/learn_tiny.yaml), whose one-shape images need no more resolution.
    "tiny64": {
        "vision": {
            "embed_dim": [16, 32, 48, 64],
            "depths": [1, 1, 1, 1],
            "num_heads": [1, 2, 3, 4],
            "num_groups": [1, 2, 3, 4],
            "window_size": 4,
            "drop_path_rate": 0.0,
        },
        "text": {"d_model": 64, "layers": 2, "heads": 4, "ffn_dim": 128},
        "image_size": 64,
        "dropout": 0.0,
    },
    # 2.1M parameters at 64 px: twice tiny's widths.
    "small": {
        "vision": {
            "embed_dim": [32, 64, 96, 128],
            "depths": [1, 1, 1, 1],
            "num_heads": [1, 2, 3, 4],
            "num_groups": [1, 2, 3, 4],
            "window_size": 4,
            "drop_path_rate": 0.0,
        },
        "text": {"d_model": 128, "layers": 2, "heads": 4, "ffn_dim": 256},
        "image_size": 64,
        "dropout": 0.0,
    },
    "base": {
        "vision": {
            "embed_dim": [128, 256, 512, 1024],
            "depths": [1, 1, 9, 1],
            "num_heads": [4, 8, 16, 32],
            "num_groups": [4, 8, 16, 32],
            "window_size": 12,
            "drop_path_rate": 0.1,
        },
        "text": {"d_model": 768, "layers": 6, "heads": 12, "ffn_dim": 3072},
        "image_size": 768,
    },
    "large": {
        "vision": {
            "embed_dim": [256, 512, 1024, 2048],
            "depths": [1, 1, 9, 1],
            "num_heads": [8, 16, 32, 64],
            "num_groups": [8, 16, 32, 64],
            "window_size": 12,
            "drop_path_rate": 0.1,
        },
        "text": {"d_model": 1024, "layers": 12, "heads": 16, "ffn_dim": 4096},
        "image_size": 768,
    },
}

# A small corpus so the byte-level BPE learns merges for the words the synthetic tasks use; any other
# string still round-trips through the 256 byte-level base symbols.
_CORPUS = [
    "What is the total amount? What is the date? What is the invoice number? Who is the recipient?",
    "What is the name of the company? What is written in the title? Which field is shown at the top?",
    "Invoice Receipt Form Report Date Total Amount Name Company Address Phone Number Reference Account",
    "Question Answer Choices Answer with the letter. What does the image describe? Locate the objects",
    "circle square triangle rectangle ellipse red green blue yellow black white orange purple",
    "January February March April May June July August September October November December",
    "0 1 2 3 4 5 6 7 8 9 10 12 15 20 25 30 45 50 75 100 1998 2001 $ % . , : / - # ( )",
    "the a an of in on at to for with is are was were by from this that which what who how many",
]


def _train_tokenizer(vocab_size: int) -> BartTokenizer:
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        _CORPUS * 4,
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],  # BART's ids: bos 0, pad 1, eos 2, unk 3
        show_progress=False,
    )
    trained = json.loads(bpe._tokenizer.to_str())["model"]
    tokenizer = BartTokenizer(
        vocab=trained["vocab"],
        merges=[tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]],
        model_max_length=1024,
        extra_special_tokens={"image_token": "<image>"},  # read back as `tokenizer.image_token(_id)`
    )
    tokenizer.add_tokens([f"<loc_{i}>" for i in range(NUM_LOCATION_BINS)] + TASK_TOKENS)
    # The image placeholder is a special token, as in the official conversion script.
    tokenizer.add_tokens(AddedToken("<image>", special=True, normalized=False), special_tokens=True)
    return tokenizer


def image_seq_length(image_size: int, num_stages: int = 4) -> int:
    """Number of image tokens: one per cell of the last DaViT stage (stride 32) plus one pooled token."""
    side = image_size // 2 ** (num_stages + 1)
    return side * side + 1


def build_processor(image_size: int, vocab_size: int = 1024) -> Florence2Processor:
    tokenizer = _train_tokenizer(vocab_size)
    image_processor = CLIPImageProcessor(
        do_resize=True,
        size={"height": image_size, "width": image_size},
        resample=3,  # bicubic, as the released processor
        do_center_crop=False,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
        do_convert_rgb=True,
        image_seq_length=image_seq_length(image_size),
    )
    return Florence2Processor(
        image_processor=image_processor, tokenizer=tokenizer, post_processor_config=POST_PROCESSOR_CONFIG
    )


def build_config(size: str, vocab_size: int, image_token_id: int) -> Florence2Config:
    if size not in ARCHITECTURES:
        raise ValueError(f"Unknown model size {size!r}; valid sizes: {', '.join(ARCHITECTURES)}")
    arch = ARCHITECTURES[size]
    text = arch["text"]
    text_config = BartConfig(
        vocab_size=vocab_size,
        d_model=text["d_model"],
        encoder_layers=text["layers"],
        decoder_layers=text["layers"],
        encoder_attention_heads=text["heads"],
        decoder_attention_heads=text["heads"],
        encoder_ffn_dim=text["ffn_dim"],
        decoder_ffn_dim=text["ffn_dim"],
        max_position_embeddings=1024,
        bos_token_id=0,
        pad_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=2,
        forced_bos_token_id=0,
        forced_eos_token_id=2,
        dropout=arch.get("dropout", 0.0 if size == "tiny" else 0.1),
    )
    vision_config = Florence2VisionConfig(projection_dim=text["d_model"], **arch["vision"])
    return Florence2Config(
        text_config=text_config, vision_config=vision_config, image_token_id=image_token_id
    )


def build_random_florence2(
    out_dir: str | Path, size: str = "tiny", image_size: int | None = None, seed: int = 0
) -> Path:
    """Write a random-initialised native Florence-2 (`size` in tiny/base/large) and its processor to `out_dir`.

    Idempotent: a folder holding a complete build with the same arguments is returned as is.
    """
    out_dir = Path(out_dir)
    image_size = image_size or ARCHITECTURES.get(size, {}).get("image_size", 768)
    spec = {"size": size, "image_size": image_size, "seed": seed, "version": BUILD_VERSION}
    marker = out_dir / BUILD_MARKER
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)

    processor = build_processor(image_size)
    tokenizer = processor.tokenizer
    # Pad the vocabulary to a multiple of 64 like the released checkpoints (faster matmuls).
    vocab_size = (len(tokenizer) + 63) // 64 * 64
    config = build_config(size, vocab_size, tokenizer.image_token_id)
    torch.manual_seed(seed)
    model = Florence2ForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=2,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
        forced_bos_token_id=0,
        forced_eos_token_id=2,
        max_new_tokens=64,
        num_beams=1,
    )
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    marker.write_text(json.dumps(spec))
    logger.info(
        "Built random %s Florence-2 (%d image tokens) in %s", size, image_seq_length(image_size), out_dir
    )
    return out_dir
