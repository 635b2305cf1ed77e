"""Helpers the GPU checks share: peaks, data, the largest batch that fits, a one-step training probe."""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from florence_recipes.configs.model import ModelArguments
from florence_recipes.errors import RecipeError
from florence_recipes.models.loading import apply_training_mode, load_model, load_processor
from florence_recipes.tooling.benchmark_paths import (
    BenchmarkData,
    BenchmarkSettings,
    parse_yaml_value,
    prepare_data,
)
from florence_recipes.tooling.blog_loop import BLOG_LEARNING_RATE
from florence_recipes.tooling.gpu_plan import CheckPlan, yaml_batch, yaml_for
from florence_recipes.tooling.measure import measure_matmul_tflops, resolve_peak_tflops
from florence_recipes.tooling.memory import GIB


def peak_of(plan: CheckPlan) -> float:
    if plan.dry_run and plan.peak_tflops is None:
        # A short fp32 matmul measurement instead of the benchmark's longer one: MFU of a tiny model is no goal.
        return measure_matmul_tflops(plan.device, torch.float32, 512)
    return resolve_peak_tflops(plan.device, plan.peak_tflops)[0]


def run_dir(plan: CheckPlan, name: str) -> Path:
    return plan.work_dir / "runs" / name


def data_for(plan: CheckPlan, settings: BenchmarkSettings) -> BenchmarkData:
    return prepare_data(settings, settings.eval_samples)


def train_summary(result: dict[str, Any]) -> dict[str, Any]:
    return {
        "samples_per_s": result["train_samples_per_s"],
        "mfu": result["mfu"],
        "peak_memory_gib": result["peak_memory_bytes"] / GIB,
        "precision": result["precision"],
    }


def release(plan: CheckPlan) -> None:
    gc.collect()
    if plan.device.type == "cuda":
        torch.cuda.empty_cache()


def is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def largest_fitting_batch(fits: Callable[[int], bool], start: int, limit: int) -> tuple[int, bool]:
    """Largest batch in [1, limit] for which `fits` holds, assuming it holds up to some batch and not above:
    doubling from `start`, then bisection. Returns it and whether the search stopped at `limit`."""
    low, high = 0, None  # low fits; high (if known) does not
    batch = max(1, min(start, limit))
    while high is None:
        if fits(batch):
            low = batch
            if batch >= limit:
                return low, True
            batch = min(2 * batch, limit)
        else:
            high = batch
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return low, False


def _probe_batch(model_args: ModelArguments, data: BenchmarkData) -> dict[str, torch.Tensor]:
    """Up to 4 processed training rows (input ids, pixels, -100-masked labels), for the probe to tile."""
    processor = load_processor(model_args)
    rows = data.train_rows.select(range(min(4, len(data.train_rows))))
    inputs = processor(
        text=list(rows["prompt"]), images=list(rows["image"]), return_tensors="pt", padding=True
    )
    labels = processor.tokenizer(list(rows["target"]), return_tensors="pt", padding=True)["input_ids"]
    labels[labels == processor.tokenizer.pad_token_id] = -100
    return {"input_ids": inputs["input_ids"], "pixel_values": inputs["pixel_values"], "labels": labels}


def training_step_probe(
    plan: CheckPlan, data: BenchmarkData, size: str, mode: str, blog: bool
) -> Callable[[int], bool]:
    """`fits(batch)`: does one training step (forward, backward, AdamW) of this path fit at `batch`?

    The blog loop's step: fp32, per-parameter AdamW. Ours: the YAML's weight dtype, attention, mixed precision
    and fused AdamW, without `dedup_vision` (it only lowers memory, so the batch found is a lower bound).
    The batch tiles the processed rows of `data` (same shapes as real ones, no per-try preprocessing).
    """
    config = yaml_for(size, mode)
    recipe = {
        key: parse_yaml_value(config, key, None) for key in ("torch_dtype", "attn_implementation", "bf16")
    }
    model_args = ModelArguments(
        model_name_or_path=str(data.model_dir),
        training_mode=mode,
        torch_dtype="float32" if blog else recipe["torch_dtype"] or "float32",
        attn_implementation="sdpa" if blog else recipe["attn_implementation"] or "sdpa",
    )
    device = plan.device
    base = _probe_batch(model_args, data)
    model = apply_training_mode(load_model(model_args), model_args).to(device)
    model.train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        parameters,
        lr=BLOG_LEARNING_RATE,
        foreach=False if blog else None,
        fused=not blog and device.type == "cuda",
    )
    use_bf16 = not blog and bool(recipe["bf16"]) and (device.type == "cuda" or not plan.dry_run)

    def fits(batch: int) -> bool:
        repeats = -(-batch // len(base["labels"]))
        tensors = {
            key: value.repeat(repeats, *([1] * (value.dim() - 1)))[:batch].to(device)
            for key, value in base.items()
        }
        try:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss = model(**tensors).loss
            loss.backward()
            optimizer.step()
            return True
        except (torch.OutOfMemoryError, RuntimeError) as err:
            if not is_out_of_memory(err):
                raise
            return False
        finally:
            optimizer.zero_grad(set_to_none=True)
            del tensors
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.empty_cache()

    return fits


def search_batch(plan: CheckPlan, size: str, mode: str, blog: bool) -> dict[str, Any]:
    settings = plan.benchmark_settings(size, mode, batch_size=1)
    data = data_for(plan, settings)
    fits = training_step_probe(plan, data, size, mode, blog)
    batch, capped = largest_fitting_batch(fits, yaml_batch(size, mode), plan.batch_search_limit)
    if batch < 1:
        raise RecipeError(f"not even batch 1 fits for {plan.size(size)} {mode}")
    return {"largest_batch": batch, "search_capped": capped}
