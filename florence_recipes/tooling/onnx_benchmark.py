"""onnxruntime against PyTorch eager on the CPU: latency at batch 1, throughput at batch 8, one process.

The model is a random-initialised Florence-2 of a release's architecture (`builders.model`; speed does not
depend on weight values), exported with `models.onnx_export` in fp32 and int8. Every path answers the same
processed batch greedily with the same token limit, so each generates the same number of tokens (the fp32
export the very tokens of PyTorch, which the result records); the processor's own time is left out of all.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from florence_recipes.builders.model import build_random_florence2
from florence_recipes.configs.model import ModelArguments
from florence_recipes.models.inference import generate_ids, load_for_inference
from florence_recipes.models.onnx_export import export_onnx
from florence_recipes.models.onnx_inference import OnnxFlorence2
from florence_recipes.tooling.measure import device_description

PROMPT = "<DocVQA>What is the total amount?"
PATHS = ("PyTorch eager fp32", "onnxruntime fp32", "onnxruntime int8")


@dataclass(frozen=True)
class OnnxBenchmarkSettings:
    model_size: str = "base"
    work_dir: Path = Path(".cache/benchmark-onnx")
    throughput_batch: int = 8
    max_new_tokens: int = 16
    repeats: int = 2  # timed runs per cell; a batch of 8 at 768 px takes ~1 min on 2 cores
    threads: int | None = None  # default: every core, for torch and onnxruntime alike


def _images(count: int) -> list[Image.Image]:
    """Deterministic noise pictures: the processor resizes them to the model's input size."""
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (600, 480, 3), dtype=np.uint8)) for _ in range(count)]


def _median_seconds(run: Callable[[], np.ndarray], repeats: int, warm_up: bool) -> tuple[float, np.ndarray]:
    if warm_up:  # once per path, at batch 1: first-call allocations, thread pools, onnxruntime's graph set-up
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        ids = run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), ids


def _prepared(settings: OnnxBenchmarkSettings) -> tuple[Path, Path, float | None]:
    """The model folder and its export (both reused when present) and the export's seconds if done now."""
    model_dir = settings.work_dir / f"{settings.model_size}-florence2"
    if not (model_dir / "config.json").is_file():
        build_random_florence2(model_dir, size=settings.model_size)
    export_dir = settings.work_dir / f"{settings.model_size}-florence2-onnx"
    export_seconds = None
    if not (export_dir / "onnx" / "decoder_model_merged_quantized.onnx").is_file():
        start = time.perf_counter()
        export_onnx(ModelArguments(model_name_or_path=str(model_dir)), export_dir, quantize="int8")
        export_seconds = time.perf_counter() - start
    return model_dir, export_dir, export_seconds


def run_onnx_benchmark(settings: OnnxBenchmarkSettings, command: str = "") -> dict[str, Any]:
    threads = settings.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    model_dir, export_dir, export_seconds = _prepared(settings)
    load_before = os.getloadavg()
    model, processor = load_for_inference(ModelArguments(model_name_or_path=str(model_dir)))
    parameters = sum(p.numel() for p in model.parameters())
    batches = {
        size: processor(text=[PROMPT] * size, images=_images(size), return_tensors="pt")
        for size in (1, settings.throughput_batch)
    }
    rows = _torch_rows(model, batches, settings)
    del model
    gc.collect()
    arrays = {size: {key: value.numpy() for key, value in batch.items()} for size, batch in batches.items()}
    rows += _onnx_rows(export_dir, arrays, settings, threads)
    ids = {(row["path"], row["batch"]): row.pop("ids") for row in rows}
    identical = all(np.array_equal(ids[(PATHS[0], size)], ids[(PATHS[1], size)]) for size in batches)
    return {
        "command": command,
        "device": device_description(torch.device("cpu")),
        "threads": threads,
        "load_average_1min_before": round(load_before[0], 2),
        "load_average_1min_after": round(os.getloadavg()[0], 2),
        "model_size": settings.model_size,
        "parameters": parameters,
        "export_seconds": None if export_seconds is None else round(export_seconds, 1),
        "max_new_tokens": settings.max_new_tokens,
        "repeats": settings.repeats,
        "onnx_fp32_tokens_identical_to_pytorch": identical,
        "rows": rows,
    }


def _torch_rows(
    model: torch.nn.Module, batches: dict[int, Any], settings: OnnxBenchmarkSettings
) -> list[dict[str, Any]]:
    rows = []
    for size, batch in batches.items():

        def run(batch: Any = batch) -> np.ndarray:
            return generate_ids(model, batch, max_new_tokens=settings.max_new_tokens, num_beams=1).numpy()

        rows.append(_row(PATHS[0], size, *_median_seconds(run, settings.repeats, warm_up=size == 1)))
    return rows


def _onnx_rows(
    export_dir: Path, batches: dict[int, dict[str, np.ndarray]], settings: OnnxBenchmarkSettings, threads: int
) -> list[dict[str, Any]]:
    rows = []
    for path, quantized in ((PATHS[1], False), (PATHS[2], True)):
        session = OnnxFlorence2(export_dir, quantized=quantized, threads=threads)
        for size, batch in batches.items():

            def run(batch: dict[str, np.ndarray] = batch, session: OnnxFlorence2 = session) -> np.ndarray:
                return session.generate(
                    batch["input_ids"],
                    batch["attention_mask"],
                    batch["pixel_values"],
                    settings.max_new_tokens,
                )

            rows.append(_row(path, size, *_median_seconds(run, settings.repeats, warm_up=size == 1)))
        del session
        gc.collect()
    return rows


def _row(path: str, batch: int, seconds: float, ids: np.ndarray) -> dict[str, Any]:
    return {
        "path": path,
        "batch": batch,
        "median_seconds": round(seconds, 3),
        "images_per_second": round(batch / seconds, 3),
        "generated_tokens": int(ids.shape[1] - 1),
        "ids": ids,
    }


def format_table(result: dict[str, Any]) -> str:
    """Markdown: per path, batch-1 latency and batch-N throughput, each also relative to PyTorch, and the
    tokens each generated (equal lengths make the times comparable)."""
    by = {(row["path"], row["batch"]): row for row in result["rows"]}
    big = max(row["batch"] for row in result["rows"])
    base_latency, base_rate = by[(PATHS[0], 1)]["median_seconds"], by[(PATHS[0], big)]["images_per_second"]
    lines = [
        f"| Path | latency, batch 1 (s) | vs PyTorch | throughput, batch {big} (images/s) | vs PyTorch "
        f"| new tokens (batch 1 / {big}) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for path in PATHS:
        one, many = by[(path, 1)], by[(path, big)]
        latency, rate = one["median_seconds"], many["images_per_second"]
        lines.append(
            f"| {path} | {latency:.3g} | {base_latency / latency:.2f}x | {rate:.3g} | {rate / base_rate:.2f}x "
            f"| {one['generated_tokens']} / {many['generated_tokens']} |"
        )
    lines += [
        "",
        f"{result['model_size']} stand-in ({result['parameters'] / 1e6:.1f}M parameters), greedy, at most "
        f"{result['max_new_tokens']} new tokens; median of {result['repeats']} runs after a batch-1 warm-up per "
        f"path; {result['device']}, {result['threads']} threads; 1-min load average "
        f"{result['load_average_1min_before']} before, {result['load_average_1min_after']} after. onnxruntime "
        f"fp32 tokens identical to PyTorch: {'yes' if result['onnx_fp32_tokens_identical_to_pytorch'] else 'NO'}.",
    ]
    return "\n".join(lines)
