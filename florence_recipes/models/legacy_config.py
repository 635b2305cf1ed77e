"""Original (remote-code) Florence-2 config, tokenizer, image processor and generation config -> native ones;
options the native classes cannot represent are refused with one line."""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path
from typing import Any

from transformers import (
    AddedToken,
    BartConfig,
    BartTokenizer,
    CLIPImageProcessor,
    Florence2Config,
    Florence2VisionConfig,
    GenerationConfig,
)

from florence_recipes.errors import RecipeError, first_line
from florence_recipes.models.florence2 import FLORENCE_TOKENS, IMAGE_TOKEN
from florence_recipes.models.legacy_weights import read_json

logger = logging.getLogger(__name__)


# BART architecture and id settings carried over from the original `text_config` (a BART config by another name).
_TEXT_KEYS = (
    "vocab_size", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
    "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "max_position_embeddings",
    "activation_function", "dropout", "attention_dropout", "activation_dropout", "init_std", "encoder_layerdrop",
    "decoder_layerdrop", "scale_embedding", "classifier_dropout", "bos_token_id", "pad_token_id", "eos_token_id",
    "decoder_start_token_id", "forced_bos_token_id", "forced_eos_token_id",
)  # fmt: skip
_GENERATION_KEYS = ("num_beams", "no_repeat_ngram_size", "early_stopping", "length_penalty")
_ID_KEYS = (
    "bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id", "forced_bos_token_id", "forced_eos_token_id",
)  # fmt: skip


def _check(condition: bool, source: str, what: str) -> None:
    if not condition:
        raise RecipeError(
            f"{source}/config.json: {what}; only the released Florence-2 architecture can be converted"
        )


def convert_config(
    legacy: dict[str, Any], vocab_size: int, image_token_id: int, source: str
) -> Florence2Config:
    """Native config from the original one; refuses options the native classes cannot represent."""
    vision = legacy.get("vision_config") or {}
    text = legacy.get("text_config") or {}
    _check(
        vision.get("model_type", "davit") == "davit",
        source,
        f"vision model_type {vision.get('model_type')!r}",
    )
    _check(
        list(vision.get("image_feature_source", ["spatial_avg_pool", "temporal_avg_pool"]))
        == ["spatial_avg_pool", "temporal_avg_pool"],
        source,
        f"image_feature_source {vision.get('image_feature_source')}",
    )
    pos = vision.get("image_pos_embed") or {"type": "learned_abs_2d", "max_pos_embeddings": 50}
    temporal = vision.get("visual_temporal_embedding") or {"type": "COSINE", "max_temporal_embeddings": 100}
    _check(pos.get("type") == "learned_abs_2d", source, f"image_pos_embed type {pos.get('type')!r}")
    _check(
        temporal.get("type") == "COSINE", source, f"visual_temporal_embedding type {temporal.get('type')!r}"
    )
    for flag in ("add_bias_logits", "add_final_layer_norm", "normalize_before"):
        _check(not text.get(flag, False), source, f"text_config.{flag} is true")
    missing = [k for k in ("dim_embed", "depths", "num_heads", "num_groups") if k not in vision]
    _check(not missing, source, f"vision_config lacks {', '.join(missing)}")
    vision_config = Florence2VisionConfig(
        embed_dim=list(vision["dim_embed"]),
        depths=list(vision["depths"]),
        num_heads=list(vision["num_heads"]),
        num_groups=list(vision["num_groups"]),
        patch_size=list(vision.get("patch_size", [7, 3, 3, 3])),
        patch_stride=list(vision.get("patch_stride", [4, 2, 2, 2])),
        patch_padding=list(vision.get("patch_padding", [3, 1, 1, 1])),
        patch_prenorm=list(vision.get("patch_prenorm", [False, True, True, True])),
        window_size=vision.get("window_size", 12),
        drop_path_rate=vision.get("drop_path_rate", 0.1),
        projection_dim=vision.get("projection_dim", legacy.get("projection_dim")),
        max_position_embeddings=pos["max_pos_embeddings"],
        max_temporal_embeddings=temporal["max_temporal_embeddings"],
    )
    text_kwargs = {k: text[k] for k in _TEXT_KEYS if k in text}
    text_kwargs["vocab_size"] = vocab_size
    text_config = BartConfig(**text_kwargs)
    _check(
        vision_config.projection_dim == text_config.d_model,
        source,
        f"projection_dim {vision_config.projection_dim} != d_model {text_config.d_model}",
    )
    config = Florence2Config(
        text_config=text_config, vision_config=vision_config, image_token_id=image_token_id
    )
    config.architectures = ["Florence2ForConditionalGeneration"]
    return config


def _name_image_token(tokenizer: BartTokenizer) -> BartTokenizer:
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return BartTokenizer.from_pretrained(tmp, extra_special_tokens={"image_token": IMAGE_TOKEN})


def convert_tokenizer(folder: Path, source: str) -> BartTokenizer:
    """The original BART tokenizer with Florence-2's tokens (added as the original processor adds them) and `<image>`."""
    config_path = folder / "tokenizer_config.json"
    tokenizer_class = read_json(config_path).get("tokenizer_class") if config_path.is_file() else None
    if tokenizer_class and not re.fullmatch(r"(Bart|Roberta)Tokenizer(Fast)?", tokenizer_class):
        raise RecipeError(
            f"{config_path}: tokenizer_class {tokenizer_class!r} is not Florence-2's BART tokenizer"
        )
    try:
        tokenizer = BartTokenizer.from_pretrained(str(folder))
    except Exception as err:
        raise RecipeError(f"{source}: cannot read its BART tokenizer ({first_line(err)})") from None
    if IMAGE_TOKEN in tokenizer.get_vocab():
        raise RecipeError(
            f"{source}: its tokenizer already has {IMAGE_TOKEN}; it is not in the original layout"
        )
    vocab = tokenizer.get_vocab()
    missing = [t for t in FLORENCE_TOKENS if t not in vocab]
    if missing:
        tokenizer.add_special_tokens(
            {"additional_special_tokens": missing}, replace_extra_special_tokens=False
        )
    ids = tokenizer.convert_tokens_to_ids(FLORENCE_TOKENS)
    if ids != list(range(ids[0], ids[0] + len(FLORENCE_TOKENS))):
        raise RecipeError(
            f"{source}: Florence-2's task and <loc_i> tokens are not at consecutive ids in their released order"
        )
    tokenizer.add_tokens(AddedToken(IMAGE_TOKEN, special=True, normalized=False), special_tokens=True)
    return _name_image_token(tokenizer)


_IMAGE_KEYS = (
    "do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
    "do_normalize", "image_mean", "image_std", "do_convert_rgb", "image_seq_length",
)  # fmt: skip


def convert_image_processor(folder: Path, source: str) -> CLIPImageProcessor:
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        raise RecipeError(f"{source}: no preprocessor_config.json")
    settings = read_json(path)
    kind = settings.get("image_processor_type", "CLIPImageProcessor")
    if kind not in ("CLIPImageProcessor", "CLIPImageProcessorFast"):
        raise RecipeError(f"{path}: image_processor_type {kind!r} is not Florence-2's CLIPImageProcessor")
    return CLIPImageProcessor(**{k: settings[k] for k in _IMAGE_KEYS if k in settings})


def convert_generation_config(
    folder: Path, legacy: dict[str, Any], text_config: BartConfig
) -> GenerationConfig:
    """Generation defaults as the original code applied them.

    Its `generate` delegates to the inner language model, whose defaults come from `text_config` (`num_beams`,
    `no_repeat_ngram_size`, ...): those win over a top-level `generation_config.json`.
    """
    path = folder / "generation_config.json"
    settings = {}
    if path.is_file():
        settings = {
            k: v for k, v in read_json(path).items() if not k.startswith("_") and k != "transformers_version"
        }
    text = legacy.get("text_config") or {}
    settings.update({k: text[k] for k in _GENERATION_KEYS if k in text})
    for key in _ID_KEYS:
        settings.setdefault(key, getattr(text_config, key, None))
    if settings.get("num_beams", 1) == 1:
        settings.pop(
            "early_stopping", None
        )  # a beam-search-only flag; transformers refuses to save it otherwise
    return GenerationConfig(**settings)
