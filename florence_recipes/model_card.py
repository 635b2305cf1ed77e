"""The "How to use" section of a fine-tuned model's card: the prompt it was trained with, and how to decode."""

from __future__ import annotations

from pathlib import Path

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

Trained with florence-recipes (`training_mode: {mode}`,
task `{task}`): native transformers Florence-2 classes, no `trust_remote_code`.
"""
_PLACEHOLDER = "## Model description\n\nMore information needed\n"


def usage_section(
    repo: str,
    prompt: str,
    task: str,
    mode: str,
    max_tokens: int,
    num_beams: int,
    box_task: str | None = None,
) -> str:
    decode = _TEXT_DECODE if box_task is None else _BOX_DECODE.format(box_task=box_task)
    return _USAGE.format(
        repo=repo,
        prompt=prompt,
        task=task,
        mode=mode,
        max_tokens=max_tokens,
        num_beams=num_beams,
        decode=decode,
    )


def add_usage(card: Path, usage: str) -> None:
    """Put `usage` where the Trainer's generated card says "More information needed"."""
    text = card.read_text(encoding="utf-8")
    card.write_text(text.replace(_PLACEHOLDER, usage), encoding="utf-8")
