"""Inference with a fine-tuned Florence-2: load a checkpoint or LoRA adapter, generate, parse task outputs.

Shared by `recipes/evaluate.py`, `recipes/predict.py` and `recipes/demo.py`, so that all three load a model
exactly the same way (evaluation then generates and scores through `FlorenceTrainer`, as the recipe does).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import PreTrainedModel, ProcessorMixin
from transformers.utils.peft_utils import find_adapter_config_file

from florence_recipes.configs.model import ModelArguments
from florence_recipes.data.hub_tasks import DOCVQA_PROMPT
from florence_recipes.data.images import to_rgb
from florence_recipes.errors import RecipeError, first_line
from florence_recipes.models.legacy_lora import resolve_legacy_adapter
from florence_recipes.models.loading import load_model, load_processor
from florence_recipes.models.outputs import parse_outputs

logger = logging.getLogger(__name__)


def load_for_inference(model_args: ModelArguments) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Model (in eval mode) and processor from a checkpoint folder, a Hub id or a LoRA adapter folder.

    An adapter (a folder or repo with `adapter_config.json`, as `training_mode: lora` saves it) is applied
    to the base model its config names and merged, so generation runs at the plain model's speed.
    """
    source = model_args.model_name_or_path
    try:
        adapter_config = find_adapter_config_file(source, revision=model_args.model_revision)
    except OSError as err:  # neither a local folder nor a valid Hub id
        raise RecipeError(f"model_name_or_path={source}: {first_line(err)}") from None
    if adapter_config is None:
        model = load_model(model_args)
        processor = load_processor(model_args)
    else:
        from peft import PeftModel

        # A LoRA adapter trained on the original remote-code module names -> its cached native-named copy.
        native_adapter = resolve_legacy_adapter(source, model_args.model_revision)
        base = json.loads(Path(adapter_config).read_text(encoding="utf-8")).get("base_model_name_or_path")
        if not base:
            raise RecipeError(f"{adapter_config}: no base_model_name_or_path to apply the LoRA adapter to")
        logger.info("%s is a LoRA adapter: applying it to %s", source, base)
        base_args = dataclasses.replace(model_args, model_name_or_path=base, model_revision="main")
        try:
            model = load_model(base_args)
        except RecipeError as err:
            raise RecipeError(f"{adapter_config}: cannot load the base model it names ({err})") from None
        model = PeftModel.from_pretrained(
            model, native_adapter, revision=model_args.model_revision
        ).merge_and_unload()
        if native_adapter != source:  # a processor saved beside it is a remote-code one: use the base's
            processor = load_processor(base_args)
        else:
            try:  # the recipes save the processor next to the adapter; an adapter saved by hand may lack it
                processor = load_processor(model_args)
            except RecipeError:
                processor = load_processor(base_args)
    model.eval()
    return model, processor


def build_prompt(task: str, text: str | None) -> str:
    """Prompt for a task token plus optional text: `<DocVQA>` + question, `<OCR>`, `<OD>`, ..."""
    return task + (text or "").strip()


@torch.inference_mode()
def generate_ids(
    model: PreTrainedModel,
    batch: dict[str, torch.Tensor],
    max_new_tokens: int | None = None,
    num_beams: int | None = None,
    max_length: int | None = None,
) -> torch.Tensor:
    """Generated token ids for a processor batch (labels, if any, are ignored). `max_length` is the limit the
    recipes' evaluation uses (`generation_max_length`); `max_new_tokens` wins when both are given."""
    kwargs: dict[str, Any] = {}
    if max_new_tokens is not None:
        kwargs["max_new_tokens"] = max_new_tokens
    elif max_length is not None:
        kwargs["max_length"] = max_length
    if num_beams is not None:
        kwargs["num_beams"] = num_beams
    return model.generate(
        input_ids=batch["input_ids"].to(model.device),
        attention_mask=batch["attention_mask"].to(model.device),
        pixel_values=batch["pixel_values"].to(model.device, model.dtype),
        **kwargs,
    )


def answer(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    images: Sequence[Image.Image],
    task: str = DOCVQA_PROMPT,
    text: str | None = None,
    max_new_tokens: int | None = None,
    num_beams: int | None = None,
    max_length: int | None = None,
    prompt: str | None = None,
) -> list[str | dict[str, Any]]:
    """One batched generation: the same prompt (`prompt`, else `task` + `text`) for every image, parsed by the
    task token `task` ("" for a prompt without one: plain text)."""
    images = [to_rgb(image) for image in images]
    prompt = build_prompt(task, text) if prompt is None else prompt
    try:
        batch = processor(text=[prompt] * len(images), images=images, return_tensors="pt", padding="longest")
    except ValueError as err:  # e.g. text after a task token that takes none (`<OCR>what?`)
        raise RecipeError(f"prompt {prompt!r}: {err}") from None
    ids = generate_ids(
        model, batch, max_new_tokens=max_new_tokens, num_beams=num_beams, max_length=max_length
    )
    return parse_outputs(processor, ids, task, [image.size for image in images])
