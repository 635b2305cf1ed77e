"""Original (remote-code) Florence-2 weights -> native ones: the tensor renames, the tied and dropped tensors,
reading `.safetensors` / weights-only `.bin` files. The sources for the names are listed in
`florence_recipes.models.legacy`."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from florence_recipes.errors import RecipeError, first_line
from florence_recipes.models.florence2 import fill_new_embedding_rows

logger = logging.getLogger(__name__)

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


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise RecipeError(f"{path}: {first_line(err)}") from None


def weight_files(folder: Path) -> list[Path]:
    for index_name, single in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        index = folder / index_name
        if index.is_file():
            shards = sorted(set(read_json(index).get("weight_map", {}).values()))
            return [folder / shard for shard in shards]
        if (folder / single).is_file():
            return [folder / single]
    raise RecipeError(f"{folder}: no model.safetensors or pytorch_model.bin to convert")


def iter_tensors(files: Iterable[Path]) -> Iterator[tuple[str, torch.Tensor]]:
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
