"""Open Florence-2 checkpoints saved by the original remote-code implementation, without running its code.

The `microsoft/Florence-2-*` releases and most fine-tunes made in 2024-2025 (the blog's
`HuggingFaceM4/Florence-2-DocVQA` among them) were saved by the `trust_remote_code` classes shipped in those repos:
a `config.json` with `auto_map` and a DaViT `vision_config` (`model_type: davit`, `dim_embed`, ...), weights
named after those classes, and a tokenizer without the `<image>` placeholder the native classes need. This
module recognises that layout from `config.json` alone (no shipped `.py` file is downloaded, imported or run),
converts weights, config and processor to native `Florence2ForConditionalGeneration` ones, and caches the
result as a normal safetensors model folder:

    $FLORENCE_RECIPES_CONVERTED_CACHE, else $HF_HOME/florence_recipes/converted/<name>-<fingerprint>/

Sources for names and shapes (all public):
- transformers `src/transformers/models/florence2/convert_florence2_original_pytorch_to_hf.py`: the weight
  renames (`vision_conv_embeddings`, `vision_spatial_block`, `vision_channel_block`, `multi_modal_projector`,
  `language_model`), the transposed `image_projection`, and adding `<image>` + padding the vocabulary to 64.
- `modeling_florence2.py` / `configuration_florence2.py` / `processing_florence2.py` of microsoft/Florence-2-large
  (public copies, e.g. GitHub thomas-roth/Florence-2-large): the original module tree (`DaViT.convs/blocks`,
  `PreNorm(norm, fn)`, `Mlp.net`, `DepthWiseConv2d.dw`, `image_projection` as a bare `(dim_in, dim_out)`
  Parameter, `language_model.final_logits_bias`, tied `shared`/`embed_tokens`/`lm_head`), the config keys
  (`dim_embed`, `image_pos_embed.max_pos_embeddings`, `visual_temporal_embedding.max_temporal_embeddings`,
  `image_feature_source`) and the processor's added tokens (`builders.model.FLORENCE_TOKENS`).
- transformers `models/florence2/modeling_florence2.py` (5.x): the native module tree.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
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

from florence_recipes.builders.model import (
    FLORENCE_TOKENS,
    IMAGE_TOKEN,
    POST_PROCESSOR_CONFIG,
    fill_new_embedding_rows,
    image_seq_length,
    padded_vocab_size,
)
from florence_recipes.errors import RecipeError, first_line

logger = logging.getLogger(__name__)

CONVERTED_MARKER = ".florence_recipes_converted.json"

# One rule per original tensor family: (original name, native name). `{...}` fields match the same text on
# both sides; their patterns are in `_FIELDS`. Order does not matter: the patterns are disjoint.
_RULES: tuple[tuple[str, str], ...] = (
    ("vision_tower.convs.{i}.proj.{p}", "model.vision_tower.convs.{i}.conv.{p}"),
    ("vision_tower.convs.{i}.norm.{p}", "model.vision_tower.convs.{i}.norm.{p}"),
    (
        "vision_tower.blocks.{i}.{j}.{block}.{conv}.fn.dw.{p}",
        "model.vision_tower.blocks.{i}.{j}.{block}.{conv}.{p}",
    ),
    (
        "vision_tower.blocks.{i}.{j}.spatial_block.window_attn.norm.{p}",
        "model.vision_tower.blocks.{i}.{j}.spatial_block.norm1.{p}",
    ),
    (
        "vision_tower.blocks.{i}.{j}.channel_block.channel_attn.norm.{p}",
        "model.vision_tower.blocks.{i}.{j}.channel_block.norm1.{p}",
    ),
    (
        "vision_tower.blocks.{i}.{j}.spatial_block.window_attn.fn.{linear}.{p}",
        "model.vision_tower.blocks.{i}.{j}.spatial_block.window_attn.{linear}.{p}",
    ),
    (
        "vision_tower.blocks.{i}.{j}.channel_block.channel_attn.fn.{linear}.{p}",
        "model.vision_tower.blocks.{i}.{j}.channel_block.channel_attn.{linear}.{p}",
    ),
    (
        "vision_tower.blocks.{i}.{j}.{block}.ffn.norm.{p}",
        "model.vision_tower.blocks.{i}.{j}.{block}.norm2.{p}",
    ),
    (
        "vision_tower.blocks.{i}.{j}.{block}.ffn.fn.net.{fc}.{p}",
        "model.vision_tower.blocks.{i}.{j}.{block}.ffn.{fc}.{p}",
    ),
    ("image_projection", "model.multi_modal_projector.image_projection.weight"),  # stored transposed
    ("image_proj_norm.{p}", "model.multi_modal_projector.image_proj_norm.{p}"),
    ("image_pos_embed.{axis}.weight", "model.multi_modal_projector.image_position_embed.{axis}.weight"),
    (
        "visual_temporal_embed.pos_idx_to_embed",
        "model.multi_modal_projector.visual_temporal_embed.pos_idx_to_embed",
    ),
    ("language_model.model.{rest}", "model.language_model.{rest}"),
    ("language_model.lm_head.weight", "lm_head.weight"),
)
_FIELDS = {
    "i": r"\d+",
    "j": r"\d+",
    "p": r"weight|bias",
    "block": r"spatial_block|channel_block",
    "conv": r"conv1|conv2",
    "linear": r"qkv|proj",
    "fc": r"fc1|fc2",
    "axis": r"row_embeddings|column_embeddings",
    "rest": r".+",
}
# The original keeps an all-zero output bias buffer that native BART-based Florence-2 does not have.
LEGACY_LOGITS_BIAS = "language_model.final_logits_bias"
LEGACY_PROJECTION = "image_projection"
NATIVE_SHARED = "model.language_model.shared.weight"
# Aliases of the shared embedding in the native model; `save_pretrained` writes only `NATIVE_SHARED`.
NATIVE_TIED = (
    "model.language_model.encoder.embed_tokens.weight",
    "model.language_model.decoder.embed_tokens.weight",
    "lm_head.weight",
)
# Embedding rows: vocabulary-sized tensors whose rows follow the token ids.
_VOCAB_ROWS_NATIVE = (NATIVE_SHARED, *NATIVE_TIED)


def _compile(template: str) -> re.Pattern[str]:
    pattern = re.escape(template)
    for name, field in _FIELDS.items():
        pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>{field})")
    return re.compile(pattern + r"\Z")


_TO_NATIVE = tuple((_compile(old), new) for old, new in _RULES)
_TO_LEGACY = tuple((_compile(new), old) for old, new in _RULES)


def _rename(key: str, rules: tuple[tuple[re.Pattern[str], str], ...]) -> str | None:
    for pattern, template in rules:
        match = pattern.match(key)
        if match:
            return template.format(**match.groupdict())
    return None


def to_native_key(key: str) -> str | None:
    """Native name of an original tensor name (None: not a tensor the original implementation saves)."""
    return _rename(key, _TO_NATIVE)


def to_legacy_key(key: str) -> str | None:
    """Original name of a native tensor name (the inverse of `to_native_key`)."""
    return _rename(key, _TO_LEGACY)


# ----------------------------------------------------------------------------------------------------------------
# Recognising the layout


def is_legacy_config(config: dict[str, Any]) -> bool:
    """True for a `config.json` written by the original remote-code Florence-2 (not by transformers' native one)."""
    if config.get("model_type") != "florence2":
        return False
    vision = config.get("vision_config") or {}
    return bool(config.get("auto_map")) or vision.get("model_type") == "davit" or "dim_embed" in vision


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise RecipeError(f"{path}: {first_line(err)}") from None


def _read_config(source: str, revision: str) -> dict[str, Any] | None:
    """`config.json` of a folder or Hub repo, or None when there is none to read (the normal loader then reports)."""
    folder = Path(source)
    if folder.is_dir():
        path = folder / "config.json"
        return _read_json(path) if path.is_file() else None
    from huggingface_hub import hf_hub_download

    try:
        return _read_json(Path(hf_hub_download(source, "config.json", revision=revision)))
    except Exception:  # not a Hub id, offline without a cached copy, no config.json: not ours to report
        return None


def local_snapshot(source: str, revision: str) -> Path:
    """The folder of `source`; a Hub repo is downloaded without any of its `.py` files."""
    if Path(source).is_dir():
        return Path(source)
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                source,
                revision=revision,
                allow_patterns=["*.json", "*.safetensors", "*.bin", "*.txt", "*.model"],
            )
        )
    except Exception as err:
        raise RecipeError(f"model_name_or_path={source}: {first_line(err)}") from None


# ----------------------------------------------------------------------------------------------------------------
# Weights


def _weight_files(folder: Path) -> list[Path]:
    for index_name, single in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        index = folder / index_name
        if index.is_file():
            shards = sorted(set(_read_json(index).get("weight_map", {}).values()))
            return [folder / shard for shard in shards]
        if (folder / single).is_file():
            return [folder / single]
    raise RecipeError(f"{folder}: no model.safetensors or pytorch_model.bin to convert")


def _iter_tensors(files: Iterable[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    for path in files:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    yield key, handle.get_tensor(key)
        else:
            # Never unpickle arbitrary objects: the weights-only loader accepts tensors and plain containers.
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as err:
                raise RecipeError(
                    f"{path}: not a weights-only PyTorch state dict ({first_line(err)})"
                ) from None
            if not isinstance(state, dict):
                raise RecipeError(f"{path}: holds a {type(state).__name__}, not a state dict of tensors")
            for key, value in state.items():
                if not isinstance(value, torch.Tensor):
                    raise RecipeError(f"{path}: {key} is a {type(value).__name__}, not a tensor")
                yield key, value


def _few(keys: Iterable[str], n: int = 5) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def convert_state_dict(
    legacy: dict[str, torch.Tensor], native_shapes: dict[str, torch.Size], source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Native tensors (the names `save_pretrained` writes) from an original state dict; refuses any mismatch.

    Every original tensor is consumed exactly once: renamed, or checked (the zero `final_logits_bias`, the tied
    aliases of the shared embedding). The embedding is extended to the native vocabulary size with mean rows
    (`fill_new_embedding_rows`). `native_shapes` holds the unique native tensors and their shapes.
    """
    unknown = [k for k in legacy if k != LEGACY_LOGITS_BIAS and to_native_key(k) is None]
    if unknown:
        raise RecipeError(f"{source}: unexpected keys for an original Florence-2 checkpoint: {_few(unknown)}")
    renamed: dict[str, torch.Tensor] = {}
    for key, tensor in legacy.items():
        if key == LEGACY_LOGITS_BIAS:
            if torch.count_nonzero(tensor):
                raise RecipeError(
                    f"{source}: {key} is not zero; native Florence-2 has no output bias to hold it"
                )
            continue
        renamed[to_native_key(key)] = tensor.t().contiguous() if key == LEGACY_PROJECTION else tensor
    # The original ties embed_tokens and lm_head to `shared`; safetensors checkpoints store `shared` only.
    shared = renamed.get(NATIVE_SHARED)
    for alias in NATIVE_TIED:
        tensor = renamed.pop(alias, None)
        if tensor is not None and (shared is None or not torch.equal(tensor, shared)):
            raise RecipeError(
                f"{source}: {to_legacy_key(alias)} differs from {to_legacy_key(NATIVE_SHARED)}; "
                "native Florence-2 ties them"
            )
    missing = set(native_shapes) - set(renamed)
    extra = set(renamed) - set(native_shapes)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing keys {_few(to_legacy_key(k) or k for k in missing)}")
        if extra:
            parts.append(f"unexpected keys {_few(to_legacy_key(k) or k for k in extra)}")
        raise RecipeError(f"{source}: not a complete Florence-2 of this config: {'; '.join(parts)}")
    rows = native_shapes[NATIVE_SHARED][0]
    if shared.shape[0] < rows:
        grown = shared.new_empty((rows, shared.shape[1]))
        grown[: shared.shape[0]] = shared
        fill_new_embedding_rows(grown, shared.shape[0])
        renamed[NATIVE_SHARED] = grown
    bad = sorted(k for k, v in renamed.items() if tuple(v.shape) != tuple(native_shapes[k]))
    if bad:
        raise RecipeError(
            f"{source}: {to_legacy_key(bad[0])} has shape {tuple(legacy[to_legacy_key(bad[0])].shape)}, which does "
            f"not fit its config (native {bad[0]}: {tuple(native_shapes[bad[0]])})"
        )
    return renamed


def to_legacy_state_dict(native: dict[str, torch.Tensor], legacy_vocab: int) -> dict[str, torch.Tensor]:
    """The original implementation's complete state dict (as `torch.save` of its `state_dict()` holds it) from the
    native tensors `save_pretrained` writes; the vocabulary is cut back to `legacy_vocab` rows."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in native.items():
        legacy_key = to_legacy_key(key)
        if legacy_key is None:
            raise RecipeError(f"native key {key} has no original name")
        if key == NATIVE_SHARED:
            tensor = tensor[:legacy_vocab].clone()
        out[legacy_key] = tensor.t().contiguous() if legacy_key == LEGACY_PROJECTION else tensor
    shared = out[to_legacy_key(NATIVE_SHARED)]
    for alias in NATIVE_TIED:
        out[to_legacy_key(alias)] = shared
    out[LEGACY_LOGITS_BIAS] = torch.zeros((1, legacy_vocab), dtype=shared.dtype)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Config, tokenizer, processor

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
    tokenizer_class = _read_json(config_path).get("tokenizer_class") if config_path.is_file() else None
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
    settings = _read_json(path)
    kind = settings.get("image_processor_type", "CLIPImageProcessor")
    if kind not in ("CLIPImageProcessor", "CLIPImageProcessorFast"):
        raise RecipeError(f"{path}: image_processor_type {kind!r} is not Florence-2's CLIPImageProcessor")
    return CLIPImageProcessor(**{k: settings[k] for k in _IMAGE_KEYS if k in settings})


def _generation_config(folder: Path, legacy: dict[str, Any], text_config: BartConfig) -> GenerationConfig:
    """Generation defaults as the original code applied them.

    Its `generate` delegates to the inner language model, whose defaults come from `text_config` (`num_beams`,
    `no_repeat_ngram_size`, ...): those win over a top-level `generation_config.json`.
    """
    path = folder / "generation_config.json"
    settings = {}
    if path.is_file():
        settings = {
            k: v for k, v in _read_json(path).items() if not k.startswith("_") and k != "transformers_version"
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


# ----------------------------------------------------------------------------------------------------------------
# The conversion and its cache


# Every file the conversion reads besides the weights (whose size and mtime stand in for their content).
_CONVERTED_INPUTS = (
    "config.json", "generation_config.json", "preprocessor_config.json", "tokenizer_config.json",
    "tokenizer.json", "vocab.json", "merges.txt", "added_tokens.json", "special_tokens_map.json",
)  # fmt: skip


def _fingerprint(folder: Path, files: list[Path]) -> str:
    digest = hashlib.sha256()
    for name in _CONVERTED_INPUTS:
        path = folder / name
        if path.is_file():
            digest.update(name.encode() + path.read_bytes())
    for path in files:
        stat = path.stat()
        digest.update(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def cache_root() -> Path:
    if os.environ.get("FLORENCE_RECIPES_CONVERTED_CACHE"):
        return Path(os.environ["FLORENCE_RECIPES_CONVERTED_CACHE"])
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "florence_recipes" / "converted"


def convert_legacy_checkpoint(
    source: str, output_dir: str | Path, revision: str = "main", final_dir: Path | None = None
) -> Path:
    """Write the native version of the original-layout checkpoint `source` (folder or Hub id) to `output_dir`.

    `final_dir`: where `output_dir` will be moved (only for the log line).
    """
    folder = local_snapshot(source, revision)
    legacy_config = _read_json(folder / "config.json")
    if not is_legacy_config(legacy_config):
        raise RecipeError(f"{source}: config.json is not an original (remote-code) Florence-2 config")
    files = _weight_files(folder)
    tokenizer = convert_tokenizer(folder, source)
    image_processor = convert_image_processor(folder, source)
    image_token_id = tokenizer.image_token_id
    legacy_vocab = (legacy_config.get("text_config") or {}).get("vocab_size", legacy_config.get("vocab_size"))
    if legacy_vocab is None or image_token_id > legacy_vocab:
        raise RecipeError(
            f"{source}: its tokenizer has {image_token_id} tokens but the model {legacy_vocab} embedding rows"
        )
    vocab_size = padded_vocab_size(max(legacy_vocab, image_token_id + 1))
    config = convert_config(legacy_config, vocab_size, image_token_id, source)
    expected_tokens = image_seq_length(image_processor.size["height"], len(config.vision_config.embed_dim))
    if getattr(image_processor, "image_seq_length", expected_tokens) != expected_tokens:
        raise RecipeError(
            f"{source}/preprocessor_config.json: image_seq_length {image_processor.image_seq_length} != "
            f"{expected_tokens} image tokens the model makes at {image_processor.size['height']} px"
        )
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in Florence2ForConditionalGeneration(config).state_dict().items()}
    for alias in NATIVE_TIED:
        shapes.pop(alias)
    tensors = convert_state_dict(dict(_iter_tensors(files)), shapes, source)

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    dtype = tensors[NATIVE_SHARED].dtype
    config.dtype = dtype
    config.save_pretrained(output_dir)
    _generation_config(folder, legacy_config, config.text_config).save_pretrained(output_dir)
    save_file(tensors, str(output_dir / "model.safetensors"), metadata={"format": "pt"})
    processor = Florence2Processor(
        image_processor=image_processor, tokenizer=tokenizer, post_processor_config=POST_PROCESSOR_CONFIG
    )
    processor.save_pretrained(output_dir)
    # A warning, so that the one line shows even where no logging is configured (predict.py, the demo).
    logger.warning(
        "Converted original-layout (remote-code) Florence-2 %s to native: %d weight tensors from %s renamed, "
        "vocabulary %d -> %d rows (+%s), config and processor (%d image tokens); saved in %s",
        source,
        len(tensors),
        ", ".join(p.name for p in files),
        legacy_vocab,
        vocab_size,
        IMAGE_TOKEN,
        expected_tokens,
        final_dir or output_dir,
    )
    return output_dir


def native_checkpoint(source: str, revision: str = "main") -> str | None:
    """Path of the cached native copy of an original-layout checkpoint (converted on first use); None otherwise.

    Safe with several processes (a file lock; the copy is written to a temporary folder and renamed).
    """
    config = _read_config(source, revision)
    if config is None or not is_legacy_config(config):
        return None
    folder = local_snapshot(source, revision)
    files = _weight_files(folder)
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", source.strip("/").split("/")[-1] or "model")
    target = cache_root() / f"{name}-{_fingerprint(folder, files)}"
    if (target / CONVERTED_MARKER).is_file():
        return str(target)
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not (target / CONVERTED_MARKER).is_file():
            staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
            try:
                convert_legacy_checkpoint(str(folder), staging, final_dir=target)
                (staging / CONVERTED_MARKER).write_text(json.dumps({"source": source, "revision": revision}))
                shutil.rmtree(target, ignore_errors=True)
                staging.rename(target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        else:
            logger.info("Using the native copy of %s converted earlier: %s", source, target)
    return str(target)


def resolve_legacy(model_args: Any) -> Any:
    """`model_args` (a `ModelArguments`) itself, or a copy pointing at the native copy of an original checkpoint."""
    native = native_checkpoint(model_args.model_name_or_path, model_args.model_revision)
    if native is None:
        return model_args
    return dataclasses.replace(model_args, model_name_or_path=native, model_revision="main")


# ----------------------------------------------------------------------------------------------------------------
# LoRA adapters trained on the original module names

_PEFT_PREFIX = "base_model.model."
_ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def _split_adapter_key(key: str) -> tuple[str, str]:
    """`base_model.model.<module>.lora_A.weight` -> (`<module>`, `.lora_A.weight`)."""
    index = key.find(".lora_")
    if not key.startswith(_PEFT_PREFIX) or index < 0:
        raise RecipeError(f"adapter key {key}: not a PEFT LoRA tensor (only LoRA adapters can be converted)")
    return key[len(_PEFT_PREFIX) : index], key[index:]


def _module_to_native(module: str) -> str | None:
    native = to_native_key(module + ".weight")
    return None if native is None else native.removesuffix(".weight")


def convert_lora_adapter(source: str, output_dir: str | Path, revision: str = "main") -> Path | None:
    """Rename a LoRA adapter trained on the original module names to native ones; None if already native.

    Its `target_modules` becomes the exact list of converted module names, so PEFT builds the same layers.
    Adapters that also save whole modules (`modules_to_save`) are refused.
    """
    folder = local_snapshot(source, revision)
    config = _read_json(folder / "adapter_config.json")
    weights = next((folder / n for n in _ADAPTER_WEIGHTS if (folder / n).is_file()), None)
    if weights is None:
        raise RecipeError(f"{source}: no adapter_model.safetensors or adapter_model.bin")
    tensors = dict(_iter_tensors([weights]))
    modules = {key: _split_adapter_key(key) for key in tensors}
    if all(m.startswith(("model.", "lm_head")) for m, _ in modules.values()):
        return None  # native names already
    if config.get("peft_type", "LORA") != "LORA":
        raise RecipeError(
            f"{source}: a {config.get('peft_type')} adapter on original Florence-2 names; only LoRA is converted"
        )
    if config.get("modules_to_save"):
        raise RecipeError(
            f"{source}: LoRA adapter on original Florence-2 names with modules_to_save "
            f"{config['modules_to_save']}; convert its base model and retrain, or merge it with the original code"
        )
    converted: dict[str, torch.Tensor] = {}
    targets: set[str] = set()
    for key, (module, suffix) in modules.items():
        native = _module_to_native(module)
        if native is None:
            raise RecipeError(
                f"{source}: LoRA on original module {module}, which has no native Florence-2 counterpart"
            )
        if module == LEGACY_PROJECTION:
            raise RecipeError(
                f"{source}: LoRA on {module}, a bare parameter in the original, cannot be converted"
            )
        converted[_PEFT_PREFIX + native + suffix] = tensors[key]
        targets.add(native)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    config.update(target_modules=sorted(targets), layers_to_transform=None, layers_pattern=None)
    (output_dir / "adapter_config.json").write_text(json.dumps(config, indent=2))
    save_file(converted, str(output_dir / "adapter_model.safetensors"), metadata={"format": "pt"})
    logger.warning(
        "Converted LoRA adapter %s from original Florence-2 module names to native: %d tensors on %d modules; saved in %s",
        source,
        len(converted),
        len(targets),
        output_dir,
    )
    return output_dir


def resolve_legacy_adapter(source: str, revision: str = "main") -> str:
    """`source` itself, or the cached native-named copy of a LoRA adapter trained on the original module names."""
    folder = local_snapshot(source, revision)
    weights = next((folder / n for n in _ADAPTER_WEIGHTS if (folder / n).is_file()), None)
    if weights is None:
        return source  # PEFT reports it
    if weights.suffix == ".safetensors":
        with safe_open(str(weights), framework="pt") as handle:
            keys = list(handle.keys())
    else:
        keys = [key for key, _ in _iter_tensors([weights])]
    if all(_split_adapter_key(key)[0].startswith(("model.", "lm_head")) for key in keys):
        return source
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", source.strip("/").split("/")[-1] or "adapter")
    target = cache_root() / f"{name}-adapter-{_fingerprint(folder, [weights])}"
    if (target / CONVERTED_MARKER).is_file():
        return str(target)
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / CONVERTED_MARKER).is_file():
            return str(target)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
        try:
            if convert_lora_adapter(str(folder), staging) is None:
                return source
            (staging / CONVERTED_MARKER).write_text(json.dumps({"source": source, "revision": revision}))
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return str(target)
