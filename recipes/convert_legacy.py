"""Convert a Florence-2 checkpoint saved by the original remote-code implementation to native transformers.

    python recipes/convert_legacy.py --model_name_or_path microsoft/Florence-2-base-ft --output_dir florence2-base-ft-native

`--model_name_or_path` is a folder or Hub id in the original layout (`config.json` with `auto_map` and a DaViT
`vision_config`; none of its `.py` files is downloaded or run), or a LoRA adapter trained on the original
module names. The output is a native `Florence2ForConditionalGeneration` folder (safetensors, config,
generation config, processor) or a native-named adapter. The recipes do this conversion on their own, into a
cache, whenever `model_name_or_path` is in the original layout; this script is for keeping the copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from florence_recipes.cli import run_recipe
from florence_recipes.configs.parser import RecipeArgumentParser
from florence_recipes.errors import RecipeError
from florence_recipes.models.legacy import convert_legacy_checkpoint, local_snapshot
from florence_recipes.models.legacy_lora import convert_lora_adapter


@dataclass
class ConvertArguments:
    model_name_or_path: str = field(
        metadata={"help": "Original-layout Florence-2 folder or Hub id, or LoRA adapter."}
    )
    output_dir: str = field(metadata={"help": "Folder for the native copy."})
    model_revision: str = field(
        default="main", metadata={"help": "Branch, tag or commit of a Hub checkpoint."}
    )


def main() -> None:
    (args,) = RecipeArgumentParser((ConvertArguments,)).parse()
    source = local_snapshot(args.model_name_or_path, args.model_revision)
    if (source / "adapter_config.json").is_file():
        if convert_lora_adapter(str(source), args.output_dir) is None:
            raise RecipeError(f"{args.model_name_or_path}: the adapter already uses native module names")
    else:
        convert_legacy_checkpoint(str(source), Path(args.output_dir))
    print(args.output_dir)


if __name__ == "__main__":
    run_recipe(main)
