"""LoRA adapters trained on the original (remote-code) Florence-2 module names, renamed to native ones and
cached like converted checkpoints (`florence_recipes.models.legacy`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from florence_recipes.errors import RecipeError
from florence_recipes.models.legacy import (
    cached_conversion,
    local_snapshot,
)
from florence_recipes.models.legacy_weights import LEGACY_PROJECTION, iter_tensors, read_json, to_native_key

logger = logging.getLogger(__name__)


_PEFT_PREFIX = "base_model.model."
_ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def _split_adapter_key(key: str) -> tuple[str, str]:
    """`base_model.model.<module>.lora_A.weight` -> (`<module>`, `.lora_A.weight`)."""
    index = key.find(".lora_")
    if not key.startswith(_PEFT_PREFIX) or index < 0:
        raise RecipeError(f"adapter key {key}: not a PEFT LoRA tensor (only LoRA adapters can be converted)")
    return key[len(_PEFT_PREFIX) : index], key[index:]


def _module_to_native(module: str) -> str | None:
    native = to_native_key(module + ".weight")
    return None if native is None else native.removesuffix(".weight")


def convert_lora_adapter(source: str, output_dir: str | Path, revision: str = "main") -> Path | None:
    """Rename a LoRA adapter trained on the original module names to native ones; None if already native.

    Its `target_modules` becomes the exact list of converted module names, so PEFT builds the same layers.
    Adapters that also save whole modules (`modules_to_save`) are refused.
    """
    folder = local_snapshot(source, revision)
    config = read_json(folder / "adapter_config.json")
    weights = next((folder / n for n in _ADAPTER_WEIGHTS if (folder / n).is_file()), None)
    if weights is None:
        raise RecipeError(f"{source}: no adapter_model.safetensors or adapter_model.bin")
    tensors = dict(iter_tensors([weights]))
    modules = {key: _split_adapter_key(key) for key in tensors}
    if all(m.startswith(("model.", "lm_head")) for m, _ in modules.values()):
        return None  # native names already
    if config.get("peft_type", "LORA") != "LORA":
        raise RecipeError(
            f"{source}: a {config.get('peft_type')} adapter on original Florence-2 names; only LoRA is converted"
        )
    if config.get("modules_to_save"):
        raise RecipeError(
            f"{source}: LoRA adapter on original Florence-2 names with modules_to_save "
            f"{config['modules_to_save']}; convert its base model and retrain, or merge it with the original code"
        )
    converted: dict[str, torch.Tensor] = {}
    targets: set[str] = set()
    for key, (module, suffix) in modules.items():
        native = _module_to_native(module)
        if native is None:
            raise RecipeError(
                f"{source}: LoRA on original module {module}, which has no native Florence-2 counterpart"
            )
        if module == LEGACY_PROJECTION:
            raise RecipeError(
                f"{source}: LoRA on {module}, a bare parameter in the original, cannot be converted"
            )
        converted[_PEFT_PREFIX + native + suffix] = tensors[key]
        targets.add(native)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    config.update(target_modules=sorted(targets), layers_to_transform=None, layers_pattern=None)
    (output_dir / "adapter_config.json").write_text(json.dumps(config, indent=2))
    save_file(converted, str(output_dir / "adapter_model.safetensors"), metadata={"format": "pt"})
    logger.warning(
        "Converted LoRA adapter %s from original Florence-2 module names to native: %d tensors on %d modules; saved in %s",
        source,
        len(converted),
        len(targets),
        output_dir,
    )
    return output_dir


def resolve_legacy_adapter(source: str, revision: str = "main") -> str:
    """`source` itself, or the cached native-named copy of a LoRA adapter trained on the original module names."""
    folder = local_snapshot(source, revision)
    weights = next((folder / n for n in _ADAPTER_WEIGHTS if (folder / n).is_file()), None)
    if weights is None:
        return source  # PEFT reports it
    if weights.suffix == ".safetensors":
        with safe_open(str(weights), framework="pt") as handle:
            keys = list(handle.keys())
    else:
        keys = [key for key, _ in iter_tensors([weights])]
    if all(_split_adapter_key(key)[0].startswith(("model.", "lm_head")) for key in keys):
        return source
    converted = cached_conversion(
        source,
        revision,
        folder,
        [weights],
        "-adapter",
        lambda staging, _: convert_lora_adapter(str(folder), staging),
    )
    return source if converted is None else converted
