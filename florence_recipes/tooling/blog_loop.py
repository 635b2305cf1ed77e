"""The blog post's training loop and demo inference, re-implemented as the benchmark's baseline.

Written by us from the blog's description, kept faithful on everything that sets its speed: fp32 weights and
math, the processor called inside `collate_fn` on the main process (`num_workers=0`) with the tensors moved to
the device there, answers tokenised in the loop without masking their padding, `AdamW` (the per-parameter
implementation, like the `transformers.AdamW` it used) with a linear schedule, and one `generate(num_beams=3)`
call per example for inference. One deliberate difference: the blog's freezing (`param.is_trainable = False`)
froze nothing; here the same `training_mode` as our path is applied, so both train the same parameters.

Not a training recipe: `recipes/docvqa.py` is. This module exists so `florence_recipes.benchmark` can measure
what our path gains.
"""

from __future__ import annotations

from typing import Any

import torch
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, ProcessorMixin, get_scheduler

BLOG_BATCH_SIZE = 6  # the blog's batch for the frozen-vision run on one A100
BLOG_LEARNING_RATE = 1e-6  # the blog's learning rate for every setting
BLOG_NUM_BEAMS = 3  # the blog's demo generation


class BlogDocVQADataset(torch.utils.data.Dataset):
    """The blog's dataset class: (question prompt, first answer, RGB image) per row."""

    def __init__(self, rows: Dataset) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[str, str, Any]:
        row = self.rows[index]
        image = row["image"]
        if image.mode != "RGB":
            image = image.convert("RGB")
        return row["prompt"], row["target"], image


def blog_dataloader(
    rows: Dataset, processor: ProcessorMixin, device: torch.device, batch_size: int = BLOG_BATCH_SIZE
) -> DataLoader:
    """The blog's loader: shuffled, main-process collation that runs the processor and moves to `device`."""

    def collate_fn(batch: list[tuple[str, str, Any]]) -> tuple[Any, tuple[str, ...]]:
        questions, answers, images = zip(*batch, strict=True)
        inputs = processor(text=list(questions), images=list(images), return_tensors="pt", padding=True).to(
            device
        )
        return inputs, answers

    return DataLoader(
        BlogDocVQADataset(rows), batch_size=batch_size, shuffle=True, collate_fn=collate_fn, num_workers=0
    )


def blog_optimizer(
    model: PreTrainedModel, num_training_steps: int, lr: float = BLOG_LEARNING_RATE
) -> tuple[torch.optim.Optimizer, Any]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, foreach=False)
    scheduler = get_scheduler(
        name="linear", optimizer=optimizer, num_warmup_steps=0, num_training_steps=num_training_steps
    )
    return optimizer, scheduler


def blog_labels(processor: ProcessorMixin, answers: tuple[str, ...], device: torch.device) -> torch.Tensor:
    """The blog's labels: the padded answer ids, tokenised in the loop, padding not masked."""
    return processor.tokenizer(
        text=list(answers), return_tensors="pt", padding=True, return_token_type_ids=False
    ).input_ids.to(device)


def blog_loss(model: PreTrainedModel, inputs: Any, labels: torch.Tensor) -> torch.Tensor:
    """The blog's forward: no attention mask."""
    return model(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"], labels=labels).loss


def blog_train_step(
    model: PreTrainedModel,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    inputs: Any,
    labels: torch.Tensor,
) -> float:
    """One step of the blog's loop on a batch and its `blog_labels`."""
    loss = blog_loss(model, inputs, labels)
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()
    return loss.item()


def blog_generate(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    prompt: str,
    image: Any,
    device: torch.device,
    max_new_tokens: int,
    task: str = "<DocVQA>",
    num_beams: int = BLOG_NUM_BEAMS,
) -> str:
    """The blog's demo `run_example`: one example, beam search with 3 beams (`num_beams` to compare with
    greedy decoding at equal beams), then post-processing."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    inputs = processor(text=prompt, images=image, return_tensors="pt").to(device)
    generated_ids = model.generate(
        input_ids=inputs["input_ids"],
        pixel_values=inputs["pixel_values"],
        max_new_tokens=max_new_tokens,
        num_beams=num_beams,
    )
    generated_text = processor.batch_decode(generated_ids, skip_special_tokens=False)[0]
    parsed = processor.post_process_generation(
        generated_text, task=task, image_size=(image.width, image.height)
    )
    return parsed[task]
