"""Answer with an exported Florence-2 (`onnx_export`) on onnxruntime: greedy decoding in numpy, no torch model.

The processor (tokenizer + image processor) prepares the inputs as for the PyTorch model; the image features
replace the prompt's `<image>` placeholders as `Florence2Model` does, so the encoder sees the same sequence, and
the decoding loop applies the generation config's forced first/last tokens and `no_repeat_ngram_size` as
`generate` does, so its greedy tokens are the PyTorch model's (`tests/test_onnx.py` checks it item by item).
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from transformers import AutoProcessor, ProcessorMixin

from florence_recipes.data.images import to_rgb
from florence_recipes.errors import RecipeError, first_line
from florence_recipes.models.outputs import parse_outputs

ONNX_SUBFOLDER = "onnx"
ONNX_PARTS = ("vision_encoder", "embed_tokens", "encoder_model", "decoder_model_merged")
QUANTIZED_SUFFIX = "_quantized"  # transformers.js' name for the int8 files (its `dtype: "q8"`)


def require_onnx_extra() -> None:
    """One line instead of an ImportError when the `onnx` extra is not installed."""
    missing = [name for name in ("onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise RecipeError(f'{" and ".join(missing)} not installed: pip install -e ".[onnx]" (docs/deploy.md)')


def past_names(num_layers: int) -> list[str]:
    return [name.replace("present.", "past_key_values.", 1) for name in present_names(num_layers)]


def present_names(num_layers: int, encoder: bool = True) -> list[str]:
    """Cache tensors per layer: the decoder's self-attention key and value, then the cross-attention's (optimum's
    and transformers.js' names)."""
    kinds = ("decoder", "encoder") if encoder else ("decoder",)
    return [
        f"present.{i}.{kind}.{kv}" for i in range(num_layers) for kind in kinds for kv in ("key", "value")
    ]


@dataclass(frozen=True)
class _Decoding:
    """The token ids and `generate` settings the greedy loop needs, read from the exported JSON files."""

    image_token_id: int
    start: int
    eos: int
    pad: int
    forced_bos: int | None
    forced_eos: int | None
    no_repeat_ngram_size: int
    num_layers: int
    heads: int
    head_dim: int
    default_max_new_tokens: int | None
    default_max_length: int


class OnnxFlorence2:
    """The four ONNX sessions of an export folder plus its processor; `generate` mirrors greedy `generate`."""

    def __init__(self, folder: str | Path, quantized: bool = False, threads: int | None = None) -> None:
        require_onnx_extra()
        import onnxruntime as ort

        folder = Path(folder)
        suffix = QUANTIZED_SUFFIX if quantized else ""
        paths = {part: folder / ONNX_SUBFOLDER / f"{part}{suffix}.onnx" for part in ONNX_PARTS}
        missing = [str(path.relative_to(folder)) for path in paths.values() if not path.is_file()]
        missing += [
            name for name in ("config.json", "generation_config.json") if not (folder / name).is_file()
        ]
        if missing:
            hint = " (export with --quantize int8)" if quantized else ""
            raise RecipeError(
                f"--onnx {folder}: not an ONNX export of recipes/export_onnx.py, missing {', '.join(missing)}{hint}"
            )
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.sessions = {
            part: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            for part, path in paths.items()
        }
        self.decoding = _read_decoding(folder)
        try:
            self.processor: ProcessorMixin = AutoProcessor.from_pretrained(folder)
        except (OSError, ValueError) as err:
            raise RecipeError(f"--onnx {folder}: cannot load its processor ({first_line(err)})") from None

    def encode(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, pixel_values: np.ndarray
    ) -> np.ndarray:
        """The text encoder's states for a processor batch: image features in place of the `<image>` tokens."""
        (embeds,) = self.sessions["embed_tokens"].run(None, {"input_ids": input_ids})
        (features,) = self.sessions["vision_encoder"].run(
            None, {"pixel_values": pixel_values.astype(np.float32)}
        )
        placeholders = input_ids == self.decoding.image_token_id
        if placeholders.sum() != features.shape[0] * features.shape[1]:
            raise RecipeError(
                f"{int(placeholders.sum())} <image> tokens in the prompt for {features.shape[0] * features.shape[1]} "
                "image features: the processor and the export disagree on the image size"
            )
        embeds[placeholders] = features.reshape(-1, features.shape[-1])
        (states,) = self.sessions["encoder_model"].run(
            None, {"inputs_embeds": embeds, "attention_mask": attention_mask}
        )
        return states

    def generate(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        pixel_values: np.ndarray,
        max_new_tokens: int | None = None,
        max_length: int | None = None,
    ) -> np.ndarray:
        """Greedy ids, `decoder_start_token_id` first and padded after `</s>` with `pad_token_id`, as `generate`
        returns them; the length limits as `generate` reads them (`_length_limit`)."""
        d = self.decoding
        states = self.encode(input_ids.astype(np.int64), attention_mask.astype(np.int64), pixel_values)
        batch = states.shape[0]
        limit = _length_limit(d, max_new_tokens, max_length)
        sequences = np.full((batch, 1), d.start, dtype=np.int64)
        done = np.zeros(batch, dtype=bool)
        feeds: dict[str, np.ndarray] = {
            "encoder_attention_mask": attention_mask.astype(np.int64),
            "encoder_hidden_states": states,
            "use_cache_branch": np.array([False]),
        }
        empty = np.zeros((batch, d.heads, 0, d.head_dim), dtype=np.float32)
        feeds.update({name: empty for name in past_names(d.num_layers)})  # unused on the first step
        names = ["logits", *present_names(d.num_layers)]
        while sequences.shape[1] < limit and not done.all():
            (step_embeds,) = self.sessions["embed_tokens"].run(None, {"input_ids": sequences[:, -1:]})
            feeds["inputs_embeds"] = step_embeds
            outputs = dict(zip(names, self.sessions["decoder_model_merged"].run(names, feeds), strict=True))
            scores = _processed_scores(d, outputs["logits"][:, -1, :], sequences, limit)
            tokens = np.where(done, d.pad, scores.argmax(axis=-1))
            sequences = np.concatenate([sequences, tokens[:, None]], axis=1)
            done |= tokens == d.eos
            for name in present_names(d.num_layers):
                # The encoder's keys/values are computed on the first step only; the cached branch passes them on.
                feeds[name.replace("present.", "past_key_values.", 1)] = outputs[name]
            feeds["use_cache_branch"] = np.array([True])
        return sequences


def _length_limit(d: _Decoding, max_new_tokens: int | None, max_length: int | None) -> int:
    """The longest sequence, start token included, as `generate` computes it for an encoder-decoder: a
    `max_new_tokens` (given, else the generation config's) wins over `max_length`."""
    new_tokens = max_new_tokens if max_new_tokens is not None else d.default_max_new_tokens
    if new_tokens is not None:
        return new_tokens + 1
    return max_length if max_length is not None else d.default_max_length


def _processed_scores(d: _Decoding, logits: np.ndarray, sequences: np.ndarray, limit: int) -> np.ndarray:
    """`generate`'s logits processors that a Florence-2 generation config sets, in `generate`'s order."""
    scores = logits.astype(np.float32, copy=True)
    length = sequences.shape[1]
    n = d.no_repeat_ngram_size
    if n and length + 1 >= n:  # ban every token that would repeat an n-gram already generated
        for row, sequence in enumerate(sequences.tolist()):
            prefix = tuple(sequence[length - n + 1 :])
            banned = [
                sequence[i + n - 1] for i in range(length - n + 1) if tuple(sequence[i : i + n - 1]) == prefix
            ]
            scores[row, banned] = -np.inf
    for forced, due in ((d.forced_bos, length == 1), (d.forced_eos, length == limit - 1)):
        if forced is not None and due:
            scores[:] = -np.inf
            scores[:, forced] = 0.0
    return scores


def _read_decoding(folder: Path) -> _Decoding:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        generation = json.loads((folder / "generation_config.json").read_text(encoding="utf-8"))
        text = config["text_config"]
        heads = text["decoder_attention_heads"]
        return _Decoding(
            image_token_id=config["image_token_id"],
            start=generation.get("decoder_start_token_id", text["decoder_start_token_id"]),
            eos=generation.get("eos_token_id", text["eos_token_id"]),
            pad=generation.get("pad_token_id", text["pad_token_id"]),
            forced_bos=generation.get("forced_bos_token_id"),
            forced_eos=generation.get("forced_eos_token_id"),
            no_repeat_ngram_size=generation.get("no_repeat_ngram_size") or 0,
            num_layers=text["decoder_layers"],
            heads=heads,
            head_dim=text["d_model"] // heads,
            default_max_new_tokens=generation.get("max_new_tokens"),
            default_max_length=generation.get("max_length", 20),
        )
    except (ValueError, KeyError, TypeError) as err:
        raise RecipeError(
            f"--onnx {folder}: config.json is not a Florence-2 config ({first_line(err)})"
        ) from None


def onnx_answer(
    model: OnnxFlorence2,
    images: Sequence[Image.Image],
    prompt: str,
    task: str,
    max_new_tokens: int | None = None,
    max_length: int | None = None,
) -> list[str | dict[str, Any]]:
    """`inference.answer` on onnxruntime: one greedy generation of `prompt` for every image, parsed by `task`."""
    images = [to_rgb(image) for image in images]
    try:
        batch = model.processor(
            text=[prompt] * len(images), images=images, return_tensors="np", padding="longest"
        )
    except ValueError as err:  # e.g. text after a task token that takes none (`<OCR>what?`)
        raise RecipeError(f"prompt {prompt!r}: {err}") from None
    ids = model.generate(
        batch["input_ids"], batch["attention_mask"], batch["pixel_values"], max_new_tokens, max_length
    )
    return parse_outputs(model.processor, ids, task, [image.size for image in images])
