"""Load native Florence-2 (no remote code) and set which parameters train: full, frozen_vision or lora."""

from __future__ import annotations

import logging

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, PreTrainedModel, ProcessorMixin
from transformers.models.florence2.modeling_florence2 import Florence2DropPath

from florence_recipes.configs.model import ModelArguments
from florence_recipes.errors import RecipeError, first_line
from florence_recipes.models.legacy import resolve_legacy

logger = logging.getLogger(__name__)

# Modules of `Florence2ForConditionalGeneration.model` that turn pixels into image tokens.
VISION_MODULES = ("vision_tower", "multi_modal_projector")


def load_processor(model_args: ModelArguments) -> ProcessorMixin:
    model_args = resolve_legacy(model_args)  # an original remote-code checkpoint -> its cached native copy
    try:
        return AutoProcessor.from_pretrained(
            model_args.model_name_or_path,
            revision=model_args.model_revision,
            trust_remote_code=model_args.trust_remote_code,
        )
    except OSError as err:  # no such folder or Hub repo, or no processor files in it
        raise RecipeError(f"model_name_or_path={model_args.model_name_or_path}: {first_line(err)}") from None


def load_model(model_args: ModelArguments) -> PreTrainedModel:
    model_args = resolve_legacy(model_args)  # an original remote-code checkpoint -> its cached native copy
    dtype = (
        model_args.torch_dtype if model_args.torch_dtype == "auto" else getattr(torch, model_args.torch_dtype)
    )
    try:
        model = AutoModelForImageTextToText.from_pretrained(
            model_args.model_name_or_path,
            revision=model_args.model_revision,
            dtype=dtype,
            attn_implementation=model_args.attn_implementation,
            trust_remote_code=model_args.trust_remote_code,
            # Never unpickle weights unless asked; None = .safetensors if present, else .bin.
            use_safetensors=None if model_args.allow_pickled_weights else True,
        )
    except OSError as err:  # no such folder or Hub repo, or no weights file that may be loaded
        hint = ""
        if "safetensors" in str(err) and not model_args.allow_pickled_weights:
            hint = (
                " (only .safetensors weights are loaded; set allow_pickled_weights: true for a .bin "
                "checkpoint you trust)"
            )
        raise RecipeError(
            f"model_name_or_path={model_args.model_name_or_path}: {first_line(err)}{hint}"
        ) from None
    if model.config.model_type != "florence2":
        raise RecipeError(
            f"{model_args.model_name_or_path} is a {model.config.model_type!r} model, not a native Florence-2 "
            "(use e.g. florence-community/Florence-2-base)"
        )
    text_config = model.config.text_config
    if text_config.decoder_start_token_id is None:
        # BART convention, which Florence-2 follows: decoding starts from </s>.
        text_config.decoder_start_token_id = text_config.eos_token_id
    # Seq2SeqTrainer pads generated ids across eval batches with the top-level config's pad id.
    model.config.pad_token_id = text_config.pad_token_id
    return model


def set_generation_length(model: PreTrainedModel, max_length: int) -> None:
    """Make `max_length` the one length limit for evaluation generation.

    A checkpoint's `max_new_tokens` would silently win over the Trainer's `generation_max_length`, and
    the Trainer pads predictions to `max_length`, so a longer generation would not fit.
    """
    model.generation_config.max_new_tokens = None
    model.generation_config.max_length = max_length


def vision_parameters(model: PreTrainedModel) -> dict[str, torch.nn.Parameter]:
    """Parameters of the vision tower and projector, by name (works on a PEFT-wrapped model too)."""
    return {
        name: param
        for name, param in model.named_parameters()
        if any(f".{module}." in f".{name}" for module in VISION_MODULES)
    }


def apply_training_mode(model: PreTrainedModel, model_args: ModelArguments) -> PreTrainedModel:
    """Freeze / wrap `model` for `model_args.training_mode`; returns the model to train."""
    if model_args.training_mode in ("frozen_vision", "lora"):
        # A frozen tower is a fixed feature extractor: without stochastic depth it gives the same features in
        # train and eval mode, which is what lets `feature_cache` compute them once.
        for module in model.model.vision_tower.modules():
            if isinstance(module, Florence2DropPath):
                module.drop_prob = 0.0
    if model_args.training_mode == "frozen_vision":
        for name in VISION_MODULES:
            getattr(model.model, name).requires_grad_(False)
    elif model_args.training_mode == "lora":
        from peft import LoraConfig, get_peft_model

        targets = "|".join(model_args.lora_target_modules)
        config = LoraConfig(
            r=model_args.lora_r,
            lora_alpha=model_args.lora_alpha,
            lora_dropout=model_args.lora_dropout,
            # Only the language model: the DaViT tower reuses names like fc1/fc2 and stays frozen.
            target_modules=rf".*language_model\..*\.({targets})$",
        )
        model = get_peft_model(model, config)
    trainable, total = count_parameters(model)
    logger.info(
        "training_mode=%s: %s trainable / %s total parameters (%.2f%%)",
        model_args.training_mode,
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / total,
    )
    return model


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    def numel(param: torch.nn.Parameter) -> int:
        # A ZeRO-3 partitioned parameter is an empty placeholder; DeepSpeed keeps its full size in ds_numel.
        return getattr(param, "ds_numel", param.numel())

    trainable = sum(numel(p) for p in model.parameters() if p.requires_grad)
    return trainable, sum(numel(p) for p in model.parameters())
