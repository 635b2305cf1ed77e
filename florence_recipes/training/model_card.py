"""The "How to use" section of a fine-tuned model's card: the prompt it was trained with, and how to decode."""

from __future__ import annotations

from pathlib import Path

from florence_recipes.models.provenance import PROVENANCE_FILE, TrainingRecord

_TEXT_DECODE = "print(processor.batch_decode(ids, skip_special_tokens=True)[0])"
# Box tasks write `<loc_i>` tokens: keep them in the text and let the processor turn them into pixel boxes.
_BOX_DECODE = """text = processor.batch_decode(ids, skip_special_tokens=False)[0]
print(processor.post_process_generation(text, task="{box_task}", image_size=image.size))"""

_USAGE = """## How to use

```python
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

model = AutoModelForImageTextToText.from_pretrained("{repo}")
processor = AutoProcessor.from_pretrained("{repo}")
image = Image.open("document.png").convert("RGB")
inputs = processor(text="{prompt}", images=image, return_tensors="pt")
ids = model.generate(**inputs, max_new_tokens={max_tokens}, num_beams={num_beams})
{decode}
```

Trained with florence-recipes (`training_mode: {mode}`, `max_target_length: {max_target_length}`): native
transformers Florence-2 classes, no `trust_remote_code`. Prompt it exactly as it was trained:

| source | task | prompt format |
|---|---|---|
{sources}

`{{...}}` is your text (the question, the caption); evaluation generated with `max_length={max_tokens}`,
`num_beams={num_beams}`. `{provenance}` records all of this, and `recipes/predict.py`, `recipes/demo.py` and
`recipes/evaluate.py` of florence-recipes default to it.
"""
_PLACEHOLDER = "## Model description\n\nMore information needed\n"


def usage_section(
    repo: str,
    prompt: str,
    record: TrainingRecord,
    max_tokens: int,
    num_beams: int,
    box_task: str | None = None,
) -> str:
    """The card's usage section: an example, and the training record's task, prompt and generation facts."""
    decode = _TEXT_DECODE if box_task is None else _BOX_DECODE.format(box_task=box_task)
    sources = "\n".join(f"| {s.name} | `{s.task}` | `{s.prompt_format}` |" for s in record.sources)
    return _USAGE.format(
        repo=repo,
        prompt=prompt,
        mode=record.training_mode,
        max_target_length=record.max_target_length,
        sources=sources,
        provenance=PROVENANCE_FILE,
        max_tokens=max_tokens,
        num_beams=num_beams,
        decode=decode,
    )


def add_usage(card: Path, usage: str) -> None:
    """Put `usage` where the Trainer's generated card says "More information needed"."""
    text = card.read_text(encoding="utf-8")
    card.write_text(text.replace(_PLACEHOLDER, usage), encoding="utf-8")
