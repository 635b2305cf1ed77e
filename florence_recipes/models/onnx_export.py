"""Export a Florence-2 checkpoint to ONNX in the onnx-community/Florence-2 layout (onnxruntime, transformers.js).

`optimum-onnx` has no Florence-2 export (huggingface/optimum#1949 is open) and pins transformers < 4.58, so each
part is traced with `torch.onnx.export` (the TorchScript exporter, `dynamo=False`: it needs no onnxscript and
traces the model's Python cache objects as plain tensors) and the two decoders are merged into one graph with an
`If` on `use_cache_branch`, as optimum's `decoder_model_merged.onnx` does (`onnx_merge`).

Files (`onnx_inference.ONNX_PARTS`): `vision_encoder` (pixel_values -> image features, projection included),
`embed_tokens` (input_ids -> inputs_embeds), `encoder_model` (inputs_embeds, attention_mask ->
last_hidden_state) and `decoder_model_merged` (inputs_embeds, encoder_attention_mask, encoder_hidden_states,
past_key_values.*, use_cache_branch -> logits, present.*), each also as `<name>_quantized.onnx` (int8 dynamic
quantization) when asked. The folder also gets config.json, generation_config.json, the processor files and
the checkpoint's `florence_recipes.json`, so `recipes/predict.py --onnx` prompts it as the checkpoint is.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import warnings
from pathlib import Path

import torch
from transformers import PreTrainedModel, ProcessorMixin
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from florence_recipes.configs.model import ModelArguments
from florence_recipes.errors import RecipeError
from florence_recipes.models.inference import load_for_inference
from florence_recipes.models.onnx_inference import ONNX_PARTS, ONNX_SUBFOLDER, past_names, present_names
from florence_recipes.models.onnx_merge import merge_decoders, quantize_int8
from florence_recipes.models.provenance import read_record, write_record

logger = logging.getLogger(__name__)

OPSET = 17  # LayerNormalization is a native op from 17; onnxruntime >= 1.14 and transformers.js run it


class _VisionEncoder(torch.nn.Module):
    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.get_image_features(pixel_values).pooler_output


class _TextEncoder(torch.nn.Module):
    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.encoder = model.model.language_model.encoder

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(inputs_embeds=inputs_embeds, attention_mask=attention_mask).last_hidden_state


class _Decoder(torch.nn.Module):
    """One decoder step: logits and the new cache, flattened in `present_names` order.

    Without a past it computes the cross-attention keys/values from `encoder_hidden_states` (first step);
    with one it takes them from the past, as a cached `generate` does.
    """

    def __init__(self, model: PreTrainedModel, with_past: bool) -> None:
        super().__init__()
        self.decoder = model.model.language_model.decoder
        self.lm_head = model.lm_head
        self.with_past = with_past

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        encoder_attention_mask: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        *past: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        if self.with_past:  # per layer: self key, self value, cross key, cross value
            cache = EncoderDecoderCache([tuple(past[i : i + 4]) for i in range(0, len(past), 4)])
        else:
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        out = self.decoder(
            inputs_embeds=inputs_embeds,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            cache=cache,
            use_cache=True,
        )
        present: list[torch.Tensor] = []
        for own, cross in zip(
            out.cache.self_attention_cache.layers, out.cache.cross_attention_cache.layers, strict=True
        ):
            present += [own.keys, own.values] + ([] if self.with_past else [cross.keys, cross.values])
        return (self.lm_head(out.last_hidden_state), *present)


def export_onnx(
    model_args: ModelArguments, output_dir: str | Path, quantize: str | None = None
) -> list[Path]:
    """Export `model_args.model_name_or_path` (a checkpoint, Hub id or LoRA adapter folder) to `output_dir`."""
    if quantize not in (None, "int8"):
        raise RecipeError(
            f"--quantize {quantize!r}: the only quantization is int8 (or leave it out for fp32)"
        )
    _check_source(Path(model_args.model_name_or_path))
    # fp32 and eager attention: the graphs are the plain model's, whatever the training run used.
    model_args = dataclasses.replace(model_args, torch_dtype="float32", attn_implementation="eager")
    model, processor = load_for_inference(model_args)
    output = Path(output_dir)
    folder = output / ONNX_SUBFOLDER
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(output)
    model.generation_config.save_pretrained(output)
    processor.save_pretrained(output)
    _write_transformers_js_processor(processor, output)
    record = read_record(model_args.model_name_or_path, model_args.model_revision)
    if record is not None:
        write_record(output, record)

    written = _export_parts(model, processor.image_processor.size, folder)
    if quantize == "int8":
        written += [quantize_int8(path) for path in list(written)]
    logger.info("Exported %s to %s", model_args.model_name_or_path, output)
    return written


def _write_transformers_js_processor(processor: ProcessorMixin, output: Path) -> None:
    """`preprocessor_config.json` as transformers.js reads it: its Florence2Processor takes the task prompts and
    answer types from the image processor's config (transformers 5 keeps them in the processor class)."""
    config = processor.image_processor.to_dict()
    config["processor_class"] = "Florence2Processor"
    for name in (
        "tasks_answer_post_processing_type",
        "task_prompts_without_inputs",
        "task_prompts_with_input",
    ):
        config[name] = getattr(processor, name)
    (output / "preprocessor_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def _check_source(folder: Path) -> None:
    """One line for a local folder that is no Florence-2 checkpoint (a Hub id is checked as it loads)."""
    if not folder.is_dir() or (folder / "adapter_config.json").is_file():
        return
    config = folder / "config.json"
    try:
        model_type = json.loads(config.read_text(encoding="utf-8"))["model_type"]
    except (OSError, ValueError, KeyError, TypeError):
        raise RecipeError(
            f"{folder}: not a Florence-2 checkpoint (no config.json naming a model_type)"
        ) from None
    if model_type != "florence2":
        raise RecipeError(f"{config}: a {model_type!r} model, not Florence-2; nothing was exported")


def _export_parts(model: PreTrainedModel, image_size: dict[str, int], folder: Path) -> list[Path]:
    text = model.config.text_config
    batch, prompt, d_model = 2, 7, text.d_model
    pixels = torch.randn(batch, 3, image_size["height"], image_size["width"])
    ids = torch.randint(0, text.vocab_size, (batch, prompt))
    embeds = torch.randn(batch, prompt, d_model)
    mask = torch.ones(batch, prompt, dtype=torch.long)
    mask[1, -2:] = 0  # a padded row, so the traced encoder keeps its padding mask
    step = torch.randn(batch, 1, d_model)
    paths = {name: folder / f"{name}.onnx" for name in ONNX_PARTS}
    with torch.inference_mode(False), torch.no_grad():
        _export(
            _VisionEncoder(model), (pixels,), paths["vision_encoder"], ["pixel_values"], ["image_features"]
        )
        _export(model.get_input_embeddings(), (ids,), paths["embed_tokens"], ["input_ids"], ["inputs_embeds"])
        _export(
            _TextEncoder(model),
            (embeds, mask),
            paths["encoder_model"],
            ["inputs_embeds", "attention_mask"],
            ["last_hidden_state"],
        )
        first = _Decoder(model, with_past=False)
        args = (step, mask, embeds)
        outputs = first(*args)
        num_layers = text.decoder_layers
        with tempfile.TemporaryDirectory() as tmp:
            plain, cached = Path(tmp) / "decoder_model.onnx", Path(tmp) / "decoder_with_past_model.onnx"
            decoder_inputs = ["inputs_embeds", "encoder_attention_mask", "encoder_hidden_states"]
            _export(first, args, plain, decoder_inputs, ["logits", *present_names(num_layers)])
            _export(
                _Decoder(model, with_past=True),
                (*args, *outputs[1:]),
                cached,
                decoder_inputs + past_names(num_layers),
                ["logits", *present_names(num_layers, encoder=False)],
            )
            merge_decoders(plain, cached, paths["decoder_model_merged"])
    return list(paths.values())


def _dynamic_axes(names: list[str]) -> dict[str, dict[int, str]]:
    """Batch first everywhere, then the sequence axes by name; pixels keep the processor's fixed size."""
    axes: dict[str, dict[int, str]] = {}
    for name in names:
        if name in ("pixel_values", "image_features"):
            axes[name] = {0: "batch_size"}
        elif ".encoder." in name or name in ("encoder_attention_mask", "encoder_hidden_states"):
            axes[name] = {0: "batch_size", 2 if "." in name else 1: "encoder_sequence_length"}
        elif name.startswith(("past_key_values", "present")):
            axes[name] = {0: "batch_size", 2: f"{name.split('.')[0]}_sequence_length"}
        else:
            axes[name] = {0: "batch_size", 1: "sequence_length"}
    return axes


def _export(
    module: torch.nn.Module, args: tuple, path: Path, input_names: list[str], output_names: list[str]
) -> None:
    with warnings.catch_warnings():
        # The cache's Python-side checks (is it empty? is the cross-attention filled?) become constants of the
        # trace; that is intended, each graph serves one case (first step or cached steps).
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # Building the attention masks indexes the padding mask with aranges, never negative indices, which is
        # all the exporter warns about (tests/test_onnx.py compares padded batches token for token).
        warnings.filterwarnings("ignore", message="Exporting aten::index operator of advanced indexing")
        torch.onnx.export(
            module.eval(),
            args,
            str(path),
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=_dynamic_axes(input_names + output_names),
            opset_version=OPSET,
            dynamo=False,
        )
