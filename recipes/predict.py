"""Ask a Florence-2 checkpoint about images from the command line.

    python recipes/predict.py --model_name_or_path outputs/docvqa-base \
        --image invoice.png --question "What is the total amount?"

prints the answer; `--json` prints `[{"image", "prompt", "answer"}, ...]` instead.

The task, prompt and generation settings default to what the model was trained and evaluated with: the
`florence_recipes.json` every recipe saves with a model (`--question` fills its prompt, e.g. `<VQA>{question}`).
A model without one (an original Florence-2 release) is asked `<DocVQA>` + question with 3 beams. `--task`
takes a recipe task name (`docvqa`, `vqa`, `caption`, `ocr`, `detection`, `grounding`, `cauldron`) or any
Florence-2 task token: `<OCR>`, `<CAPTION>`, `<DETAILED_CAPTION>`, `<OD>`, `<DENSE_REGION_CAPTION>`,
`<OCR_WITH_REGION>`, `<CAPTION_TO_PHRASE_GROUNDING>` with `--question "a red car"`, ...; one that the model
was not trained on gets one warning line saying what it expects. For tasks that return boxes or polygons the
parsed result is printed and drawn on a copy of each image, saved as `OUTPUT_DIR/<image name>_<task>.png`.

`--onnx FOLDER` answers with the files `recipes/export_onnx.py` wrote instead, on onnxruntime (greedy decoding;
no PyTorch model is loaded), with the prompt of the `florence_recipes.json` exported beside them;
`--onnx_quantized` takes the int8 files (docs/deploy.md).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from florence_recipes.cli import run_recipe
from florence_recipes.configs.model import ModelArguments
from florence_recipes.configs.parser import RecipeArgumentParser
from florence_recipes.errors import RecipeError, first_line
from florence_recipes.models.outputs import draw_regions
from florence_recipes.models.provenance import (
    GenerationSettings,
    PromptChoice,
    generation_settings,
    read_record,
    resolve_prompt,
)

# Images, prompt -> answers: one generation call, on PyTorch or onnxruntime.
Answerer = Callable[[list[Image.Image], str], list[str | dict[str, Any]]]


@dataclass
class PredictArguments:
    image: list[str] = field(metadata={"help": "Image file(s) to ask about."})
    question: str | None = field(
        default=None, metadata={"help": "The text of the prompt: the question, a phrase to ground, ..."}
    )
    task: str | None = field(
        default=None,
        metadata={
            "help": "Task name (docvqa, vqa, caption, ocr, detection, grounding, cauldron) or Florence-2 task "
            "token (<OCR>, <OD>, ...); default: what the model was trained on (florence_recipes.json), else "
            "<DocVQA>"
        },
    )
    json: bool = field(default=False, metadata={"help": "Print JSON instead of plain answers."})
    output_dir: str = field(
        default="outputs/predictions",
        metadata={"help": "Where the images with boxes of region tasks are saved."},
    )
    max_new_tokens: int | None = field(
        default=None,
        metadata={"help": "Longest output in tokens; default: the recorded evaluation's length, else 1024."},
    )
    num_beams: int | None = field(
        default=None, metadata={"help": "Beam search width; default: the recorded evaluation's, else 3."}
    )
    batch_size: int = field(default=8, metadata={"help": "Images per generate() call."})
    onnx: str | None = field(
        default=None,
        metadata={
            "help": "Folder written by recipes/export_onnx.py: answer on onnxruntime (greedy), no PyTorch."
        },
    )
    onnx_quantized: bool = field(default=False, metadata={"help": "With --onnx: use the int8 files."})

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "num_beams", "batch_size"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")


def open_image(path: str) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (OSError, UnidentifiedImageError) as err:
        raise RecipeError(f"--image {path}: cannot read the image ({first_line(err)})") from None


def torch_answerer(
    model_args: ModelArguments, choice: PromptChoice, generation: GenerationSettings
) -> Answerer:
    from accelerate import PartialState

    from florence_recipes.models.inference import answer, load_for_inference

    model, processor = load_for_inference(model_args)
    model.to(PartialState().device)
    return lambda images, prompt: answer(
        model,
        processor,
        images,
        task=choice.task_token,
        prompt=prompt,
        max_new_tokens=generation.max_new_tokens,
        max_length=generation.max_length,
        num_beams=generation.num_beams,
    )


def onnx_answerer(args: PredictArguments, choice: PromptChoice, generation: GenerationSettings) -> Answerer:
    """onnxruntime decodes greedily: beams the user asks for are refused, recorded ones get a warning line."""
    from florence_recipes.models.onnx_inference import OnnxFlorence2, onnx_answer

    if args.num_beams is not None and args.num_beams > 1:
        raise RecipeError(f"--num_beams {args.num_beams}: --onnx decodes greedily; leave --num_beams out")
    model = OnnxFlorence2(args.onnx, quantized=args.onnx_quantized)
    if generation.num_beams is not None and generation.num_beams > 1:
        sys.stderr.write(
            f"warning: --onnx decodes greedily (the model was evaluated with {generation.num_beams} beams)\n"
        )
    return lambda images, prompt: onnx_answer(
        model, images, prompt, choice.task_token, generation.max_new_tokens, generation.max_length
    )


def main() -> None:
    model_args, args = RecipeArgumentParser((ModelArguments, PredictArguments)).parse()
    images = [open_image(path) for path in args.image]  # fail on a bad path before loading the model
    record = read_record(args.onnx or model_args.model_name_or_path, model_args.model_revision)
    choice = resolve_prompt(args.task, record)
    if choice.warning:  # a request the model was not trained on: honoured, with one line saying so
        sys.stderr.write(f"warning: {choice.warning}\n")
    prompt = choice.prompt(args.question)
    generation = generation_settings(record, args.max_new_tokens, args.num_beams)
    if args.onnx:
        generate = onnx_answerer(args, choice, generation)
    else:
        generate = torch_answerer(model_args, choice, generation)

    results = []
    for start in range(0, len(images), args.batch_size):
        batch = images[start : start + args.batch_size]
        outputs = generate(batch, prompt)
        paths = args.image[start : start + args.batch_size]
        for path, image, output in zip(paths, batch, outputs, strict=True):
            result = {"image": path, "prompt": prompt, "answer": output}
            if isinstance(output, dict):  # boxes, quad boxes or polygons
                drawn = (
                    Path(args.output_dir) / f"{Path(path).stem}_{choice.task_token.strip('<>').lower()}.png"
                )
                drawn.parent.mkdir(parents=True, exist_ok=True)
                draw_regions(image, output).save(drawn)
                result["drawn"] = str(drawn)
            results.append(result)

    if args.json:
        json.dump(results, sys.stdout, ensure_ascii=False, indent=2)
        sys.stdout.write("\n")
        return
    for result in results:
        text = result["answer"] if isinstance(result["answer"], str) else json.dumps(result["answer"])
        prefix = f"{result['image']}: " if len(results) > 1 else ""
        print(prefix + text + (f"  (drawn: {result['drawn']})" if "drawn" in result else ""))


if __name__ == "__main__":
    run_recipe(main)
