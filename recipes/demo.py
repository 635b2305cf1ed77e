"""A Gradio app over a Florence-2 checkpoint: upload a document, ask a question, read the answer.

    pip install -e ".[demo]"
    python recipes/demo.py --model_name_or_path outputs/docvqa-base

and open http://127.0.0.1:7860. The task menu also offers Florence-2's own tasks (`<OCR>`, `<CAPTION>`,
`<OD>`, ...); for those that return boxes the answer is drawn on the image. The app listens on 127.0.0.1
only; `--server_name 0.0.0.0` serves it to your network, `--share true` through a public Gradio link.
Gradio's usage analytics and version check stay off unless `--analytics true`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import gradio as gr
from accelerate import PartialState
from PIL import Image
from transformers import PreTrainedModel, ProcessorMixin

from florence_recipes.cli import run_recipe
from florence_recipes.configs import ModelArguments, RecipeArgumentParser
from florence_recipes.errors import RecipeError
from florence_recipes.inference import answer, draw_regions, load_for_inference
from florence_recipes.tasks import DOCVQA_PROMPT

# (menu label, task token, whether the text box is used)
TASK_CHOICES = (
    ("Question about the document", DOCVQA_PROMPT, True),
    ("Read the text (OCR)", "<OCR>", False),
    ("Caption", "<CAPTION>", False),
    ("Detailed caption", "<MORE_DETAILED_CAPTION>", False),
    ("Detect objects (boxes)", "<OD>", False),
    ("Text with regions (boxes)", "<OCR_WITH_REGION>", False),
    ("Find a phrase (boxes)", "<CAPTION_TO_PHRASE_GROUNDING>", True),
)


@dataclass
class DemoArguments:
    server_name: str = field(default="127.0.0.1", metadata={"help": "Address to listen on."})
    server_port: int = field(default=7860, metadata={"help": "Port to listen on."})
    share: bool = field(default=False, metadata={"help": "Also serve through a public gradio.live link."})
    max_new_tokens: int = field(default=1024, metadata={"help": "Longest output in tokens."})
    num_beams: int = field(default=3, metadata={"help": "Beam search width (3 as in Florence-2's examples)."})
    analytics: bool = field(default=False, metadata={"help": "Let Gradio send usage analytics."})
    title: str | None = field(default=None, metadata={"help": "Page title (default: the checkpoint's name)."})


def build_demo(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    title: str,
    max_new_tokens: int,
    num_beams: int,
    analytics: bool = False,
) -> gr.Blocks:
    uses_text = {token: text for _, token, text in TASK_CHOICES}

    def run(image: Image.Image | None, task: str, text: str) -> tuple[str, Image.Image | None]:
        if image is None:
            raise gr.Error("Upload a document image first.")
        if uses_text[task] and not text.strip():
            raise gr.Error("Type a question (or phrase) for this task.")
        try:
            output = answer(
                model,
                processor,
                [image],
                task=task,
                text=text if uses_text[task] else None,
                max_new_tokens=max_new_tokens,
                num_beams=num_beams,
            )[0]
        except RecipeError as err:
            raise gr.Error(str(err)) from None
        if isinstance(output, str):
            return output, None
        return json.dumps(output), draw_regions(image, output)

    with gr.Blocks(title=title, analytics_enabled=analytics) as demo:
        gr.Markdown(f"## {title}\nUpload a document, pick a task, ask.")
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="pil", label="Document", elem_id="document")
                task = gr.Dropdown(
                    choices=[(label, token) for label, token, _ in TASK_CHOICES],
                    value=DOCVQA_PROMPT,
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
    model, processor = load_for_inference(model_args)
    model.to(PartialState().device)
    title = args.title or f"Florence-2: {model_args.model_name_or_path}"
    demo = build_demo(model, processor, title, args.max_new_tokens, args.num_beams, args.analytics)
    # System fonts: the default theme fetches Google Fonts, which an offline machine cannot reach.
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    demo.queue().launch(
        server_name=args.server_name, server_port=args.server_port, share=args.share, theme=theme
    )


if __name__ == "__main__":
    run_recipe(main)
