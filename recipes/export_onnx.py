"""Export a Florence-2 checkpoint to ONNX for onnxruntime and transformers.js (the onnx-community layout).

    python recipes/export_onnx.py --model_name_or_path outputs/docvqa-base --output_dir outputs/docvqa-base/onnx
    python recipes/export_onnx.py --model_name_or_path outputs/docvqa-base --output_dir ... --quantize int8

`--model_name_or_path` is a checkpoint folder, a Hub id or a LoRA adapter folder (merged into its base first).
The output folder holds `onnx/vision_encoder.onnx`, `onnx/embed_tokens.onnx`, `onnx/encoder_model.onnx` and
`onnx/decoder_model_merged.onnx` (fp32; with `--quantize int8` also each as `*_quantized.onnx`), plus
config.json, generation_config.json, the processor files and the checkpoint's florence_recipes.json. Ask it:

    python recipes/predict.py --onnx outputs/docvqa-base/onnx --image invoice.png --question "What is the total?"

Needs the `onnx` extra: pip install -e ".[onnx]". See docs/deploy.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from florence_recipes.cli import run_recipe, setup_logging
from florence_recipes.configs.model import ModelArguments
from florence_recipes.configs.parser import RecipeArgumentParser
from florence_recipes.models.onnx_inference import require_onnx_extra


@dataclass
class ExportArguments:
    output_dir: str = field(metadata={"help": "Folder for the ONNX files, config and processor."})
    quantize: str | None = field(
        default=None,
        metadata={"help": "int8: also write int8 dynamically quantized copies (*_quantized.onnx)."},
    )


def main() -> None:
    model_args, args = RecipeArgumentParser((ModelArguments, ExportArguments)).parse()
    setup_logging()
    require_onnx_extra()
    from florence_recipes.models.onnx_export import export_onnx

    for path in export_onnx(model_args, args.output_dir, args.quantize):
        print(path)


if __name__ == "__main__":
    run_recipe(main)
