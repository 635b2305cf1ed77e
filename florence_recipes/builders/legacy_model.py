"""Build a Florence-2 in the *original* remote-code layout offline, by converting a native one back.

It is the fixture for `florence_recipes.legacy`: the folder looks like `microsoft/Florence-2-base` (or a fine-tune
of it) on the Hub: `config.json` with `auto_map` and a DaViT `vision_config`, every tensor the original
`Florence2ForConditionalGeneration.state_dict()` holds under its original name and shape (the tied aliases and
the zero `final_logits_bias` included), the released `preprocessor_config.json`, and a plain BART tokenizer
(the original processor adds Florence-2's tokens when it loads). The shipped `.py` files are stand-ins that
raise when imported, so any code path that runs a checkpoint's own code fails loudly.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from florence_recipes.builders.model import build_random_florence2

LEGACY_BUILD_VERSION = 2
# Not `BUILD_MARKER`: `build_offline_fixtures` rebuilds folders holding that one as the tiny native model, and a
# legacy fixture handed to a smoke recipe as `model_name_or_path` must be used as it is.
LEGACY_BUILD_MARKER = ".florence_recipes_legacy_build.json"
_REMOTE_CODE = ("configuration_florence2.py", "modeling_florence2.py", "processing_florence2.py")
_AUTO_MAP = {
    "AutoConfig": "configuration_florence2.Florence2Config",
    "AutoModelForCausalLM": "modeling_florence2.Florence2ForConditionalGeneration",
}


def legacy_config(native: dict[str, Any], legacy_vocab: int, generation: dict[str, Any]) -> dict[str, Any]:
    """The original `config.json` layout (microsoft/Florence-2-base's, keys as its configuration_florence2.py reads
    them) for a native config.

    The original `generate` takes its defaults from `text_config`; the releases set `num_beams: 3`,
    `no_repeat_ngram_size: 3`, `early_stopping: true` there. The fixture carries the native model's own
    `generation` settings instead, so that both layouts generate alike through the normal commands.
    """
    text = dict(native["text_config"])
    vision = native["vision_config"]
    text.update(model_type="florence2_language", vocab_size=legacy_vocab)
    text.update(
        add_bias_logits=False, add_final_layer_norm=False, normalize_before=False, tie_word_embeddings=True
    )
    text.update(
        num_beams=generation.get("num_beams", 1),
        no_repeat_ngram_size=generation.get("no_repeat_ngram_size", 0),
    )
    for key in ("dtype", "transformers_version", "architectures"):
        text.pop(key, None)
    return {
        "_name_or_path": "microsoft/Florence-2-base",
        "architectures": ["Florence2ForConditionalGeneration"],
        "auto_map": _AUTO_MAP,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "pad_token_id": 1,
        "ignore_index": -100,
        "is_encoder_decoder": True,
        "model_type": "florence2",
        "projection_dim": vision["projection_dim"],
        "text_config": text,
        "vision_config": {
            "model_type": "davit",
            "drop_path_rate": vision["drop_path_rate"],
            "patch_size": vision["patch_size"],
            "patch_stride": vision["patch_stride"],
            "patch_padding": vision["patch_padding"],
            "patch_prenorm": vision["patch_prenorm"],
            "enable_checkpoint": False,
            "dim_embed": vision["embed_dim"],
            "num_heads": vision["num_heads"],
            "num_groups": vision["num_groups"],
            "depths": vision["depths"],
            "window_size": vision["window_size"],
            "projection_dim": vision["projection_dim"],
            "visual_temporal_embedding": {
                "type": "COSINE",
                "max_temporal_embeddings": vision["max_temporal_embeddings"],
            },
            "image_pos_embed": {
                "type": "learned_abs_2d",
                "max_pos_embeddings": vision["max_position_embeddings"],
            },
            "image_feature_source": ["spatial_avg_pool", "temporal_avg_pool"],
        },
        "vocab_size": legacy_vocab,
        "torch_dtype": native.get("dtype", "float32"),
        "transformers_version": "4.41.0.dev0",
    }


def write_legacy_florence2(native_dir: str | Path, out_dir: str | Path, weights_format: str = "bin") -> Path:
    """Write the original-layout version of the native Florence-2 in `native_dir` (one our builder made) to `out_dir`.

    `weights_format="bin"` writes `pytorch_model.bin` with every tensor, as the releases ship; "safetensors"
    writes `model.safetensors` without the tied aliases, as fine-tunes saved by the Trainer do.
    """
    # Imported here: florence_recipes.legacy imports the builders package (for the tokenizer layout).
    from florence_recipes.models.legacy_weights import NATIVE_TIED, to_legacy_key, to_legacy_state_dict

    native_dir, out_dir = Path(native_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    native_config = json.loads((native_dir / "config.json").read_text())
    legacy_vocab = native_config["image_token_id"]  # <image> follows the released vocabulary
    tokenizer_json = json.loads((native_dir / "tokenizer.json").read_text())
    if any(t["id"] < legacy_vocab for t in tokenizer_json["added_tokens"] if t["content"] == "<image>"):
        raise ValueError(f"{native_dir}: <image> is not the last token; the original layout cannot hold it")

    state = to_legacy_state_dict(load_file(str(native_dir / "model.safetensors")), legacy_vocab)
    if weights_format == "bin":
        torch.save(state, out_dir / "pytorch_model.bin")
    elif weights_format == "safetensors":
        tied = {to_legacy_key(k) for k in NATIVE_TIED}
        save_file({k: v for k, v in state.items() if k not in tied}, str(out_dir / "model.safetensors"))
    else:
        raise ValueError(f"weights_format must be bin or safetensors, not {weights_format!r}")
    generation = json.loads((native_dir / "generation_config.json").read_text())
    generation.pop("transformers_version", None)
    config = legacy_config(native_config, legacy_vocab, generation)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2))

    # The BART part of the tokenizer only: vocab.json + merges.txt, as microsoft/Florence-2-* ship it.
    model = tokenizer_json["model"]
    vocab = {token: index for token, index in model["vocab"].items() if index < legacy_vocab}
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    merges = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "model_max_length": 1024,
                "tokenizer_class": "BartTokenizer",
                "processor_class": "Florence2Processor",
            }
        )
    )
    native_processor = json.loads((native_dir / "processor_config.json").read_text())["image_processor"]
    image = {k: v for k, v in native_processor.items() if k != "do_convert_rgb"}
    image.update(
        auto_map={"AutoProcessor": "processing_florence2.Florence2Processor"},
        processor_class="Florence2Processor",
        image_processor_type="CLIPImageProcessor",
        do_convert_rgb=None,
    )
    (out_dir / "preprocessor_config.json").write_text(json.dumps(image, indent=2))
    for name in _REMOTE_CODE:
        (out_dir / name).write_text(
            f'raise RuntimeError("{name}: the remote code of a checkpoint must never run")\n'
        )
    return out_dir


def build_legacy_florence2(
    out_dir: str | Path, size: str = "tiny", weights_format: str = "bin", seed: int = 0
) -> Path:
    """A random Florence-2 of `size` in the original layout at `out_dir` (idempotent, like `build_random_florence2`)."""
    out_dir = Path(out_dir)
    spec = {"legacy": LEGACY_BUILD_VERSION, "size": size, "weights": weights_format, "seed": seed}
    marker = out_dir / LEGACY_BUILD_MARKER
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return out_dir
    with tempfile.TemporaryDirectory() as tmp:
        native = build_random_florence2(Path(tmp) / "native", size=size, seed=seed)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        write_legacy_florence2(native, out_dir, weights_format)
    marker.write_text(json.dumps(spec))
    return out_dir
