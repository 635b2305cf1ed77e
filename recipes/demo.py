"""A Gradio app over a Florence-2 checkpoint: upload a document, ask a question, read the answer.

    pip install -e ".[demo]"
    python recipes/demo.py --model_name_or_path outputs/docvqa-base

and open http://127.0.0.1:7860. The task menu starts on what the model was trained on, with the prompt and
generation settings of its training evaluation (the `florence_recipes.json` saved with the model; without one,
`<DocVQA>` + question). It also offers the recipes' other tasks and Florence-2's own (`<OCR>`, `<CAPTION>`,
`<OD>`, ...); picking one the model was not trained on logs one warning line. For tasks that return boxes the
answer is drawn on the image. The app listens on 127.0.0.1
only; `--server_name 0.0.0.0` serves it to your network, `--share true` through a public Gradio link.
Gradio's usage analytics and version check stay off unless `--analytics true`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import gradio as gr
from accelerate import PartialState
from PIL import Image
from transformers import PreTrainedModel, ProcessorMixin

from florence_recipes.cli import run_recipe
from florence_recipes.configs.model import ModelArguments
from florence_recipes.configs.parser import RecipeArgumentParser
from florence_recipes.errors import RecipeError
from florence_recipes.models.inference import answer, load_for_inference
from florence_recipes.models.outputs import draw_regions
from florence_recipes.models.provenance import (
    TrainingRecord,
    generation_settings,
    read_record,
    resolve_prompt,
)

logger = logging.getLogger(__name__)

# (menu label, task name or token): the recipes' task names, then Florence-2 tokens no recipe trains.
TASK_CHOICES = (
    ("Question about the document (docvqa)", "docvqa"),
    ("Question (vqa)", "vqa"),
    ("Read the text (OCR)", "ocr"),
    ("Caption", "caption"),
    ("Detailed caption", "<MORE_DETAILED_CAPTION>"),
    ("Detect objects (boxes)", "detection"),
    ("Text with regions (boxes)", "<OCR_WITH_REGION>"),
    ("Find a phrase (boxes)", "grounding"),
    ("Your own prompt (cauldron)", "cauldron"),
)
TRAINED = "trained"  # the menu entry of the recorded task and prompt


def task_choices(record: TrainingRecord | None) -> tuple[list[tuple[str, str]], str]:
    """The task menu and its default: the recorded training task first, else <DocVQA> as before."""
    if record is None:
        return [(label, value) for label, value in TASK_CHOICES], "docvqa"
    trained = f"As trained: {record.describe()}"
    return [(trained, TRAINED), *TASK_CHOICES], TRAINED


def make_answer(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    record: TrainingRecord | None,
    max_new_tokens: int | None,
    num_beams: int | None,
) -> Callable[[Image.Image | None, str, str], tuple[str, Image.Image | None]]:
    """The app's answer function: (image, menu value, text) -> (answer text, image with boxes or None)."""
    generation = generation_settings(record, max_new_tokens, num_beams)

    def run(image: Image.Image | None, task: str, text: str) -> tuple[str, Image.Image | None]:
        if image is None:
            raise gr.Error("Upload a document image first.")
        try:
            choice = resolve_prompt(None if task == TRAINED else task, record)
            if choice.warning:
                logger.warning(choice.warning)
            if choice.takes_text and not (text or "").strip():
                raise gr.Error("Type a question (or phrase) for this task.")
            output = answer(
                model,
                processor,
                [image],
                task=choice.task_token,
                prompt=choice.prompt(text if choice.takes_text else None),
                max_new_tokens=generation.max_new_tokens,
                max_length=generation.max_length,
                num_beams=generation.num_beams,
            )[0]
        except RecipeError as err:
            raise gr.Error(str(err)) from None
        if isinstance(output, str):
            return output, None
        return json.dumps(output), draw_regions(image, output)

    return run


@dataclass
class DemoArguments:
    server_name: str = field(default="127.0.0.1", metadata={"help": "Address to listen on."})
    server_port: int = field(default=7860, metadata={"help": "Port to listen on."})
    share: bool = field(default=False, metadata={"help": "Also serve through a public gradio.live link."})
    max_new_tokens: int | None = field(
        default=None,
        metadata={"help": "Longest output in tokens; default: the recorded evaluation's length, else 1024."},
    )
    num_beams: int | None = field(
        default=None, metadata={"help": "Beam search width; default: the recorded evaluation's, else 3."}
    )
    analytics: bool = field(default=False, metadata={"help": "Let Gradio send usage analytics."})
    title: str | None = field(default=None, metadata={"help": "Page title (default: the checkpoint's name)."})


def build_demo(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    title: str,
    max_new_tokens: int | None,
    num_beams: int | None,
    analytics: bool = False,
    record: TrainingRecord | None = None,
) -> gr.Blocks:
    run = make_answer(model, processor, record, max_new_tokens, num_beams)
    choices, default = task_choices(record)

    with gr.Blocks(title=title, analytics_enabled=analytics) as demo:
        gr.Markdown(f"## {title}\nUpload a document, pick a task, ask.")
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="pil", label="Document", elem_id="document")
                task = gr.Dropdown(
                    choices=choices,
                    value=default,
                    label="Task",
                    elem_id="task",
                )
                text = gr.Textbox(
                    label="Question", placeholder="What is the total amount?", elem_id="question"
                )
                ask = gr.Button("Ask", variant="primary", elem_id="ask")
            with gr.Column():
                reply = gr.Textbox(label="Answer", elem_id="answer", interactive=False)
                drawn = gr.Image(label="Boxes (detection tasks)", elem_id="boxes", interactive=False)
        gr.on([ask.click, text.submit], run, inputs=[image, task, text], outputs=[reply, drawn])
    return demo


def main() -> None:
    model_args, args = RecipeArgumentParser((ModelArguments, DemoArguments)).parse()
    record = read_record(model_args.model_name_or_path, model_args.model_revision)
    model, processor = load_for_inference(model_args)
    model.to(PartialState().device)
    title = args.title or f"Florence-2: {model_args.model_name_or_path}"
    demo = build_demo(model, processor, title, args.max_new_tokens, args.num_beams, args.analytics, record)
    # System fonts: the default theme fetches Google Fonts, which an offline machine cannot reach.
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    demo.queue().launch(
        server_name=args.server_name, server_port=args.server_port, share=args.share, theme=theme
    )


if __name__ == "__main__":
    run_recipe(main)
