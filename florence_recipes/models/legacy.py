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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from transformers import (
    Florence2ForConditionalGeneration,
    Florence2Processor,
)

from florence_recipes.errors import RecipeError, first_line
from florence_recipes.models.florence2 import (
    IMAGE_TOKEN,
    POST_PROCESSOR_CONFIG,
    image_seq_length,
    padded_vocab_size,
)
from florence_recipes.models.legacy_config import (
    convert_config,
    convert_generation_config,
    convert_image_processor,
    convert_tokenizer,
)
from florence_recipes.models.legacy_weights import (
    NATIVE_SHARED,
    NATIVE_TIED,
    convert_state_dict,
    iter_tensors,
    read_json,
    weight_files,
)

logger = logging.getLogger(__name__)

CONVERTED_MARKER = ".florence_recipes_converted.json"


# ----------------------------------------------------------------------------------------------------------------
# Recognising the layout


def is_legacy_config(config: dict[str, Any]) -> bool:
    """True for a `config.json` written by the original remote-code Florence-2 (not by transformers' native one)."""
    if config.get("model_type") != "florence2":
        return False
    vision = config.get("vision_config") or {}
    return bool(config.get("auto_map")) or vision.get("model_type") == "davit" or "dim_embed" in vision


def _read_config(source: str, revision: str) -> dict[str, Any] | None:
    """`config.json` of a folder or Hub repo, or None when there is none to read (the normal loader then reports)."""
    folder = Path(source)
    if folder.is_dir():
        path = folder / "config.json"
        return read_json(path) if path.is_file() else None
    from huggingface_hub import hf_hub_download

    try:
        return read_json(Path(hf_hub_download(source, "config.json", revision=revision)))
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
# The conversion and its cache


# Every file the conversion reads besides the weights (whose size and mtime stand in for their content).
_CONVERTED_INPUTS = (
    "config.json", "generation_config.json", "preprocessor_config.json", "tokenizer_config.json",
    "tokenizer.json", "vocab.json", "merges.txt", "added_tokens.json", "special_tokens_map.json",
)  # fmt: skip


def fingerprint(folder: Path, files: list[Path]) -> str:
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
    legacy_config = read_json(folder / "config.json")
    if not is_legacy_config(legacy_config):
        raise RecipeError(f"{source}: config.json is not an original (remote-code) Florence-2 config")
    files = weight_files(folder)
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
    tensors = convert_state_dict(dict(iter_tensors(files)), shapes, source)

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    dtype = tensors[NATIVE_SHARED].dtype
    config.dtype = dtype
    config.save_pretrained(output_dir)
    convert_generation_config(folder, legacy_config, config.text_config).save_pretrained(output_dir)
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


def cached_conversion(
    source: str,
    revision: str,
    folder: Path,
    files: list[Path],
    label: str,
    convert: Callable[[Path, Path], Any],
) -> str | None:
    """The cache folder of `source`'s converted copy (`cache_root()/<name><label>-<fingerprint>`), written on
    first use by `convert(staging, target)` into a staging folder that is then renamed; None when `convert`
    returns None (nothing to convert). Safe with several processes (a file lock around the conversion)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", source.strip("/").split("/")[-1] or "model")
    target = cache_root() / f"{name}{label}-{fingerprint(folder, files)}"
    if (target / CONVERTED_MARKER).is_file():
        return str(target)
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / CONVERTED_MARKER).is_file():  # another process converted it while we waited
            logger.info("Using the copy of %s converted earlier: %s", source, target)
            return str(target)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
        try:
            if convert(staging, target) is None:
                return None
            (staging / CONVERTED_MARKER).write_text(json.dumps({"source": source, "revision": revision}))
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def native_checkpoint(source: str, revision: str = "main") -> str | None:
    """Path of the cached native copy of an original-layout checkpoint (converted on first use); None otherwise."""
    config = _read_config(source, revision)
    if config is None or not is_legacy_config(config):
        return None
    folder = local_snapshot(source, revision)
    return cached_conversion(
        source,
        revision,
        folder,
        weight_files(folder),
        "",
        lambda staging, target: convert_legacy_checkpoint(str(folder), staging, final_dir=target),
    )


def resolve_legacy(model_args: Any) -> Any:
    """`model_args` (a `ModelArguments`) itself, or a copy pointing at the native copy of an original checkpoint."""
    native = native_checkpoint(model_args.model_name_or_path, model_args.model_revision)
    if native is None:
        return model_args
    return dataclasses.replace(model_args, model_name_or_path=native, model_revision="main")
