"""Answers from generated token ids: decoding, task parsing and drawing regions. No torch, so the PyTorch
(`inference`) and the onnxruntime (`onnx_inference`) paths share them and read their outputs the same way."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image, ImageDraw
from transformers import PreTrainedTokenizerBase, ProcessorMixin

from florence_recipes.data.images import to_rgb

_BOX_COLORS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324")


def decode_texts(tokenizer: PreTrainedTokenizerBase, ids: Sequence[Sequence[int]]) -> list[str]:
    """Plain-text answers of generated ids: what text tasks are scored on, and what predict and the demo show."""
    return [text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]


def parse_outputs(
    processor: ProcessorMixin, ids: Any, task: str, image_sizes: Sequence[tuple[int, int]]
) -> list[str | dict[str, Any]]:
    """Answers of a batch of generated ids (a torch tensor or a numpy array): boxes/labels parsed with the
    processor's `post_process_generation` for region tasks, and for text tasks the text exactly as the recipes'
    evaluation decodes it (`scoring.decode_texts`).

    `<loc_i>` are ordinary tokens in Florence-2's tokenizer, so the ids are parsed with special tokens kept
    (the parser strips `<s>`/`</s>`); only the batch padding is dropped first.
    """
    pad_id = processor.tokenizer.pad_token_id
    sequences = [[i for i in sequence if i != pad_id] for sequence in ids.tolist()]
    texts = decode_texts(processor.tokenizer, sequences)
    outputs: list[str | dict[str, Any]] = []
    for sequence, text, size in zip(sequences, texts, image_sizes, strict=True):
        raw = processor.decode(sequence, skip_special_tokens=False)
        parsed = processor.post_process_generation(raw, task=task, image_size=size)[task]
        outputs.append(text if isinstance(parsed, str) else parsed)
    return outputs


def draw_regions(image: Image.Image, parsed: dict[str, Any]) -> Image.Image:
    """A copy of `image` with the boxes / quadrilaterals / polygons of a parsed region-task output drawn."""
    canvas = to_rgb(image).copy()
    draw = ImageDraw.Draw(canvas)
    width = max(2, round(max(canvas.size) / 250))
    for kind in ("bboxes", "quad_boxes", "polygons"):
        labels = parsed.get(f"{kind}_labels", parsed.get("labels", []))
        for index, shape in enumerate(parsed.get(kind, [])):
            color = _BOX_COLORS[index % len(_BOX_COLORS)]
            label = labels[index] if index < len(labels) else ""
            if kind == "bboxes":
                x0, y0, x1, y1 = shape
                # An undertrained model can emit the corners in either order; PIL wants them sorted.
                anchor = (min(x0, x1), min(y0, y1))
                draw.rectangle((*anchor, max(x0, x1), max(y0, y1)), outline=color, width=width)
            else:
                # A segmentation instance is a list of polygons; a quad box is one flat polygon.
                polygons = [p for p in (shape if kind == "polygons" else [shape]) if len(p) >= 6]
                if not polygons:
                    continue
                for polygon in polygons:
                    draw.polygon(polygon, outline=color, width=width)
                anchor = (polygons[0][0], polygons[0][1])
            if label:
                left, top, right, bottom = draw.textbbox(anchor, label)
                draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=color)
                draw.text(anchor, label, fill="white")
    return canvas
