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
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from accelerate import PartialState
from PIL import Image, UnidentifiedImageError

from florence_recipes.cli import run_recipe
from florence_recipes.configs.model import ModelArguments
from florence_recipes.configs.parser import RecipeArgumentParser
from florence_recipes.errors import RecipeError, first_line
from florence_recipes.models.inference import answer, draw_regions, load_for_inference
from florence_recipes.models.provenance import generation_settings, read_record, resolve_prompt


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


def main() -> None:
    model_args, args = RecipeArgumentParser((ModelArguments, PredictArguments)).parse()
    images = [open_image(path) for path in args.image]  # fail on a bad path before loading the model
    record = read_record(model_args.model_name_or_path, model_args.model_revision)
    choice = resolve_prompt(args.task, record)
    if choice.warning:  # a request the model was not trained on: honoured, with one line saying so
        sys.stderr.write(f"warning: {choice.warning}\n")
    prompt = choice.prompt(args.question)
    generation = generation_settings(record, args.max_new_tokens, args.num_beams)
    model, processor = load_for_inference(model_args)
    model.to(PartialState().device)

    results = []
    for start in range(0, len(images), args.batch_size):
        batch = images[start : start + args.batch_size]
        outputs = answer(
            model,
            processor,
            batch,
            task=choice.task_token,
            prompt=prompt,
            max_new_tokens=generation.max_new_tokens,
            max_length=generation.max_length,
            num_beams=generation.num_beams,
        )
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
