"""Memory a training path needs, estimated before anything large is loaded, and the largest batch that fits."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch
import yaml

from florence_recipes.configs.model import ModelArguments
from florence_recipes.configs.training import cpu_bf16_wanted
from florence_recipes.errors import RecipeError
from florence_recipes.models.loading import apply_training_mode, load_model, load_processor
from florence_recipes.tooling.benchmark_paths import BenchmarkData
from florence_recipes.tooling.blog_loop import BLOG_BATCH_SIZE
from florence_recipes.tooling.measure import release_memory

GIB = 1024**3
# On top of the tensors a forward saves for backward: backward's transient activation gradients, the
# allocator's fragmentation and (CPU) the DataLoader's batches. Measured: base full at batch 2 on CPU peaked at
# ~1.9x its saved activations (14.8 GiB RSS vs 2.8 GiB saved per sample + 2.9 GiB states + ~1.2 GiB process).
ACTIVATION_HEADROOM = 2.0
# Fraction of the memory free now that a run may plan to use: the rest absorbs what the estimate leaves out
# (CUDA context and workspaces, the Python heap growing, memory the first path freed but the allocator kept).
USABLE_FRACTION = 0.9


@dataclass
class MemoryEstimate:
    """Memory one training path needs: a fixed part plus a part per sample of the batch."""

    fixed_bytes: int  # weights, gradients, optimizer states, autocast's low-precision weight copies
    per_sample_bytes: int  # activations kept for backward, per sample, with ACTIVATION_HEADROOM

    def at(self, batch_size: int) -> int:
        return self.fixed_bytes + batch_size * self.per_sample_bytes

    def largest_batch(self, available_bytes: int) -> int:
        return max(0, (int(available_bytes * USABLE_FRACTION) - self.fixed_bytes) // self.per_sample_bytes)


def available_memory(device: torch.device) -> int:
    """Bytes this process may still allocate on `device`: free GPU memory, or available system RAM."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return psutil.virtual_memory().available


def saved_activation_bytes(
    model: torch.nn.Module, inputs: dict[str, torch.Tensor], autocast: contextlib.AbstractContextManager
) -> int:
    """Bytes of the tensors one forward keeps for backward (each storage counted once)."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    parameters = {param.untyped_storage().data_ptr() for param in model.parameters()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), autocast:
        model(**inputs)
    return sum(size for pointer, size in storages.items() if pointer not in parameters)


def estimate_training_memory(
    data: BenchmarkData, mode: str, device: torch.device, config: Path
) -> dict[str, MemoryEstimate]:
    """Memory of a training step of each path, from one batch-1 forward of the model on `device`.

    Blog loop: fp32 weights, gradients and per-parameter AdamW states (16 bytes per trainable parameter).
    Ours: the YAML's weight dtype, the same gradients and fp32 AdamW states, plus autocast's bf16 weight copies.
    Both keep the activations of an fp32 forward (an upper bound for ours, which saves some in bf16 and, with
    `dedup_vision` or the feature cache, runs the vision tower less).
    """
    recipe = yaml.safe_load(config.read_text(encoding="utf-8"))
    model_args = ModelArguments(model_name_or_path=str(data.model_dir), training_mode=mode)
    processor = load_processor(model_args)
    row = data.train_rows[0]
    inputs = processor(text=[row["prompt"]], images=[row["image"]], return_tensors="pt")
    labels = processor.tokenizer([row["target"]], return_tensors="pt")["input_ids"]
    model = apply_training_mode(load_model(model_args), model_args).to(device)
    model.train()
    batch = {"input_ids": inputs["input_ids"], "pixel_values": inputs["pixel_values"], "labels": labels}
    activations = saved_activation_bytes(
        model, {key: value.to(device) for key, value in batch.items()}, contextlib.nullcontext()
    )
    parameters = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    del model
    release_memory(device)
    per_sample = math.ceil(activations * ACTIVATION_HEADROOM)
    weight_bytes = torch.empty((), dtype=getattr(torch, recipe.get("torch_dtype", "float32"))).element_size()
    ours_fixed = parameters * weight_bytes + trainable * (weight_bytes + 8)
    if recipe.get("fp16") or (recipe.get("bf16") and (device.type != "cpu" or cpu_bf16_wanted("auto"))):
        ours_fixed += parameters * 2  # autocast's per-forward low-precision copies of the weights
    return {
        "seed": MemoryEstimate(parameters * 4 + trainable * 12, per_sample),
        "ours": MemoryEstimate(ours_fixed, per_sample),
    }


def resolve_batch_size(
    requested: int | None, estimates: dict[str, MemoryEstimate], available_bytes: int, device: torch.device
) -> int:
    """The requested batch if both paths fit in memory, else a one-line error naming one that does; no
    request: the blog's batch, or the largest below it that fits."""
    fits = min(estimate.largest_batch(available_bytes) for estimate in estimates.values())
    batch = requested or min(BLOG_BATCH_SIZE, fits)
    if fits < 1 or batch > fits:
        path = max(estimates, key=lambda name: estimates[name].at(max(batch, 1)))
        needed = estimates[path].at(max(batch, 1)) / GIB
        advice = f"--batch-size {fits} fits" if fits >= 1 else "no batch fits: use a smaller --model-size"
        raise RecipeError(
            f"--batch-size {max(batch, 1)}: the {'blog loop' if path == 'seed' else 'recipe path'} needs about "
            f"{needed:.1f} GiB but {available_bytes / GIB:.1f} GiB are free on this {device.type} "
            f"(planning with {USABLE_FRACTION:.0%} of it); {advice}"
        )
    return batch
