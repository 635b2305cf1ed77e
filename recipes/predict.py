"""Ask a Florence-2 checkpoint about images from the command line.

    python recipes/predict.py --model_name_or_path outputs/docvqa-base \
        --image invoice.png --question "What is the total amount?"

prints the answer; `--json` prints `[{"image", "prompt", "answer"}, ...]` instead. Any Florence-2 task token
works as `--task` (`<DocVQA>` by default, so `--question` is the DocVQA question): `<OCR>`, `<CAPTION>`,
`<DETAILED_CAPTION>`, `<OD>`, `<DENSE_REGION_CAPTION>`, `<OCR_WITH_REGION>`,
`<CAPTION_TO_PHRASE_GROUNDING>` with `--question "a red car"`, ... For tasks that return boxes or polygons
the parsed result is printed and drawn on a copy of each image, saved as
`OUTPUT_DIR/<image name>_<task>.png`.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from accelerate import PartialState
from PIL import Image, UnidentifiedImageError

from florence_recipes.cli import run_recipe
from florence_recipes.configs import ModelArguments, RecipeArgumentParser
from florence_recipes.errors import RecipeError, first_line
from florence_recipes.inference import answer, build_prompt, draw_regions, load_for_inference
from florence_recipes.tasks import DOCVQA_PROMPT


@dataclass
class PredictArguments:
    image: list[str] = field(metadata={"help": "Image file(s) to ask about."})
    question: str | None = field(
        default=None, metadata={"help": "Text after the task token: the question for <DocVQA>, a phrase, ..."}
    )
    task: str = field(
        default=DOCVQA_PROMPT,
        metadata={
            "help": "Florence-2 task token: <DocVQA> (fine-tuned recipes), <OCR>, <CAPTION>, <OD>, ..."
        },
    )
    json: bool = field(default=False, metadata={"help": "Print JSON instead of plain answers."})
    output_dir: str = field(
        default="outputs/predictions",
        metadata={"help": "Where the images with boxes of region tasks are saved."},
    )
    max_new_tokens: int = field(
        default=1024, metadata={"help": "Longest output in tokens (region tasks need many)."}
    )
    num_beams: int = field(default=3, metadata={"help": "Beam search width (3 as in Florence-2's examples)."})
    batch_size: int = field(default=8, metadata={"help": "Images per generate() call."})

    def __post_init__(self) -> None:
        if not re.fullmatch(r"<[A-Za-z_]+>", self.task):
            raise ValueError(
                f"task must be a Florence-2 task token such as <DocVQA> or <OD>, got {self.task!r}"
            )
        for name in ("max_new_tokens", "num_beams", "batch_size"):
            if getattr(self, name) <= 0:
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
    model, processor = load_for_inference(model_args)
    model.to(PartialState().device)

    results = []
    for start in range(0, len(images), args.batch_size):
        batch = images[start : start + args.batch_size]
        outputs = answer(
            model,
            processor,
            batch,
            task=args.task,
            text=args.question,
            max_new_tokens=args.max_new_tokens,
            num_beams=args.num_beams,
        )
        paths = args.image[start : start + args.batch_size]
        for path, image, output in zip(paths, batch, outputs, strict=True):
            result = {"image": path, "prompt": build_prompt(args.task, args.question), "answer": output}
            if isinstance(output, dict):  # boxes, quad boxes or polygons
                drawn = Path(args.output_dir) / f"{Path(path).stem}_{args.task.strip('<>').lower()}.png"
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
