"""Build a random-initialised *native* Florence-2 + processor offline, saved as a normal model folder.

The folder loads with `AutoModelForImageTextToText.from_pretrained(path)` / `AutoProcessor.from_pretrained(path)`
exactly like `florence-community/Florence-2-base`, so tests and offline smoke runs exercise the same code path
as a GPU user fine-tuning the real checkpoint. Speed does not depend on weight values, so the `base` and
`large` architectures (taken from the released checkpoints' configs) also serve the benchmark.
"""

from __future__ import annotations

import json
import logging
import tempfile
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

from florence_recipes.models.florence2 import (
    BART_VOCAB_SIZE,
    FLORENCE_TOKENS,
    IMAGE_TOKEN,
    POST_PROCESSOR_CONFIG,
    fill_new_embedding_rows,
    image_seq_length,
    padded_vocab_size,
)

logger = logging.getLogger(__name__)

BUILD_MARKER = ".florence_recipes_build.json"
# Bump when the built files change (2: processor with post_processor_config; 3: released vocabulary layout),
# so older builds are rebuilt.
BUILD_VERSION = 3
# Architectures of the released checkpoints (vision: DaViT; text: BART-style encoder-decoder), from their public
# config.json (microsoft/Florence-2-base and -large: `vision_config.dim_embed/depths/num_heads/num_groups/
# window_size`, `text_config.d_model/encoder_layers/encoder_ffn_dim/max_position_embeddings` = 1024) as quoted in
# public copies of those files (e.g. GitHub hu05xing/Florence-2-base-PromptGen-v2.0 config.json). `text_vocab`
# is the byte-level BPE part of the vocabulary: BART's 50,265 for the released sizes, small for `tiny`.
# Parameter counts (tests/test_legacy.py pins them per module group): base 231.44M, large 770.21M.
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
        "text_vocab": 1024,
        "image_size": 128,
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
        "text_vocab": BART_VOCAB_SIZE,
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
        "text_vocab": BART_VOCAB_SIZE,
        "image_size": 768,
    },
}

# The tiny architecture at 64 px: 5 image tokens instead of 17 and a 4x cheaper vision tower, for the learn
# recipe (recipes/docvqa/learn_tiny.yaml), whose large-shape images need no more resolution.
ARCHITECTURES["tiny64"] = {**ARCHITECTURES["tiny"], "image_size": 64}

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


def _train_tokenizer(text_vocab: int) -> BartTokenizer:
    """A BART-layout tokenizer: `text_vocab` byte-level BPE entries, then Florence-2's tokens, then `<image>`.

    The BPE is trained offline on a small corpus, so its learned merges cover only that corpus; the rest of
    the `text_vocab` ids are unreachable filler entries (never produced by encoding), which is what makes
    the vocabulary, and so the embedding and output layers, exactly the released size.
    """
    specials = ["<s>", "<pad>", "</s>", "<unk>"]  # BART's ids: bos 0, pad 1, eos 2, unk 3
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        _CORPUS * 4,
        vocab_size=min(text_vocab - 1, 1024),
        min_frequency=1,
        special_tokens=specials,
        show_progress=False,
    )
    trained = json.loads(bpe._tokenizer.to_str())["model"]
    vocab: dict[str, int] = dict(trained["vocab"])
    filler = 0
    while len(vocab) < text_vocab - 1:
        token = (
            f"Ġ<unused{filler}>"  # a valid byte-level string (Ġ is the space byte): decodes to " <unusedN>"
        )
        filler += 1
        if token not in vocab:
            vocab[token] = len(vocab)
    vocab["<mask>"] = len(vocab)  # last BPE id, as in BART (50264)
    tokenizer = BartTokenizer(
        vocab=vocab,
        merges=[tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]],
        model_max_length=1024,  # BART's and the released tokenizer's limit
    )
    # As the released processor does: Florence-2's tokens are additional special tokens.
    tokenizer.add_special_tokens({"additional_special_tokens": FLORENCE_TOKENS})
    # The image placeholder, as in transformers' conversion script: a special token after the released vocabulary.
    tokenizer.add_tokens(AddedToken(IMAGE_TOKEN, special=True, normalized=False), special_tokens=True)
    # Name it `image_token` (read back as `tokenizer.image_token(_id)`): the constructor argument would add it
    # before Florence-2's tokens, so the finished tokenizer is reloaded with the name.
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return BartTokenizer.from_pretrained(tmp, extra_special_tokens={"image_token": IMAGE_TOKEN})


def build_processor(image_size: int, text_vocab: int = 1024) -> Florence2Processor:
    """The released processor's settings (microsoft/Florence-2-base `preprocessor_config.json`: 768x768, resample
    3 = bicubic, no centre crop, rescale 1/255, ImageNet mean/std, `image_seq_length` 577), at `image_size`."""
    tokenizer = _train_tokenizer(text_vocab)
    image_processor = CLIPImageProcessor(
        do_resize=True,
        size={"height": image_size, "width": image_size},
        resample=3,  # bicubic, as the released processor
        do_center_crop=False,
        crop_size={"height": image_size, "width": image_size},
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
        dropout=arch.get("dropout", 0.1),  # the released configs' 0.1; none for the tiny models
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
    if size not in ARCHITECTURES:
        raise ValueError(f"Unknown model size {size!r}; valid sizes: {', '.join(ARCHITECTURES)}")
    out_dir = Path(out_dir)
    image_size = image_size or ARCHITECTURES[size]["image_size"]
    spec = {"size": size, "image_size": image_size, "seed": seed, "version": BUILD_VERSION}
    marker = out_dir / BUILD_MARKER
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)

    processor = build_processor(image_size, ARCHITECTURES[size]["text_vocab"])
    tokenizer = processor.tokenizer
    # Pad the vocabulary to a multiple of 64 like the native release (faster matmuls): 51,290 -> 51,328.
    vocab_size = padded_vocab_size(len(tokenizer))
    config = build_config(size, vocab_size, tokenizer.image_token_id)
    torch.manual_seed(seed)
    model = Florence2ForConditionalGeneration(config)
    # Rows from <image> on (the image placeholder and the padding) get the mean of the released rows, exactly
    # what `florence_recipes.legacy` gives them when it converts a release-layout checkpoint; so the stand-in
    # is a converted checkpoint, and native -> legacy -> native round-trips bit for bit.
    fill_new_embedding_rows(model.get_input_embeddings().weight, tokenizer.image_token_id)
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
