"""Training / evaluation speed of our DocVQA recipe path against the blog post's loop, side by side.

One device, the same random-initialised Florence-2 (speed does not depend on weight values) and the same
synthetic DocVQA rows (about 3 questions per document, like DocVQA) for both paths, each path in a fresh process:

* **blog loop** (JSON key `seed`): `florence_recipes.blog_loop`, the blog's loop re-implemented (fp32, processor in the main
  process, batch 6, per-example `generate(num_beams=3)`).
* **ours**: `FlorenceTrainer` with the recipe YAML of the mode (`recipes/docvqa/<size>_<mode>.yaml`, else
  `base_<mode>.yaml`) — its precision, attention, optimizer, DataLoader workers and speed switches — with only
  the model, data, batch size, step count and generation length overridden to match the blog loop.

Per path: training samples/s and tokens/s (after `warmup_steps` untimed steps), the FLOPs of each timed step
counted with `torch.utils.flop_counter.FlopCounterMode` for its exact batch shapes (replayed after the timing,
with torch's grouped-convolution backward corrected), MFU of the timed steps against the device's peak, peak memory, the training DataLoader's own samples/s, and evaluation samples/s with generation.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from florence_recipes.tooling.benchmark_ours import run_ours
from florence_recipes.tooling.benchmark_paths import (
    ABLATIONS,
    BenchmarkSettings,
    parse_yaml_value,
    prepare_data,
    run_blog_loop,
)
from florence_recipes.tooling.blog_loop import BLOG_NUM_BEAMS
from florence_recipes.tooling.measure import device_description, resolve_peak_tflops, run_in_fresh_process
from florence_recipes.tooling.memory import (
    GIB,
    MemoryEstimate,
    available_memory,
    estimate_training_memory,
    resolve_batch_size,
)


def _memory_estimates(
    settings: BenchmarkSettings, device: torch.device
) -> tuple[dict[str, MemoryEstimate], int]:
    """Each path's estimate and the memory available before anything loads. The estimate needs the model and
    one document, not the data of a batch that may not fit."""
    available = available_memory(device)
    probe = prepare_data(dataclasses.replace(settings, batch_size=1, steps=1, loader_batches=1), 1)
    return estimate_training_memory(probe, settings.mode, device, settings.recipe_config()), available


def _run_ablations(
    settings: BenchmarkSettings,
    data: Any,
    device: torch.device,
    peak_tflops: float,
    output_dir: Path,
    ours: dict[str, Any],
) -> dict[str, dict[str, Any]]:
    """Our path again without each `--ablate` optimisation (one process each): its rate and ours / it."""
    ablations = {}
    for name in settings.ablate:
        if all(ours["settings"][key] == value for key, value in ABLATIONS[name].items()):
            continue  # already off in our path for this mode: nothing to compare
        variant = run_in_fresh_process(
            f"our path without {name} at batch {settings.batch_size}",
            run_ours,
            settings,
            data,
            device,
            peak_tflops,
            output_dir / f"without-{name}",
            ABLATIONS[name],
            (),
        )
        ablations[name] = {
            "changes": ABLATIONS[name],
            "train_samples_per_s": variant["train_samples_per_s"],
            "ours_speedup": ours["train_samples_per_s"] / variant["train_samples_per_s"],
        }
    return ablations


def run_benchmark(settings: BenchmarkSettings, command: str = "") -> dict[str, Any]:
    """Every measurement runs in a process of its own (`run_in_fresh_process`); this one only coordinates."""
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"  # `is_available` from NVML: no CUDA context here
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    eval_samples = settings.eval_samples or (128 if device.type == "cuda" else 6)
    peak_tflops, peak_source = run_in_fresh_process(
        "the peak measurement", resolve_peak_tflops, device, settings.peak_tflops
    )
    # Before either path loads: stop with a batch that fits rather than be killed for memory half-way.
    estimates, available = run_in_fresh_process("the memory estimate", _memory_estimates, settings, device)
    settings = dataclasses.replace(
        settings, batch_size=resolve_batch_size(settings.batch_size, estimates, available, device)
    )
    data = run_in_fresh_process("the benchmark data", prepare_data, settings, eval_samples)
    output_dir = settings.work_dir / "runs" / f"{settings.model_size}-{settings.mode}"
    yaml_beams = parse_yaml_value(settings.recipe_config(), "generation_num_beams", 1)
    ours_beams = (BLOG_NUM_BEAMS,) if yaml_beams == BLOG_NUM_BEAMS else (BLOG_NUM_BEAMS, yaml_beams)
    batch = f"at batch {settings.batch_size}"
    ours = run_in_fresh_process(
        f"our recipe path {batch}",
        run_ours,
        settings,
        data,
        device,
        peak_tflops,
        output_dir,
        None,
        ours_beams,
    )
    blog = run_in_fresh_process(f"the blog loop {batch}", run_blog_loop, settings, data, device, peak_tflops)
    ablations = _run_ablations(settings, data, device, peak_tflops, output_dir, ours)
    per_step_ratio = ours["train_samples_per_s"] / blog["train_samples_per_s"]
    return {
        "device": device_description(device),
        "device_type": device.type,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "settings": {**asdict(settings), "eval_samples": eval_samples, "work_dir": str(settings.work_dir)},
        "peak_tflops": peak_tflops,
        "peak_source": peak_source,
        "tokens_per_sample": data.tokens_per_sample,
        "ours": ours,
        "seed": blog,  # JSON key kept from the first release: the blog loop's results
        # Headline: with a feature cache, its build amortised over the YAML's epochs; else the per-step ratio.
        "train_ratio": amortised_train_ratio(ours, blog, len(data.train_rows)),
        "train_ratio_per_step": per_step_ratio,
        "eval_ratio": ours["eval_samples_per_s"] / blog["eval_samples_per_s"],  # both at the blog's 3 beams
        "memory_estimate_gib": {
            path: estimate.at(settings.batch_size) / GIB for path, estimate in estimates.items()
        },
        "memory_available_gib": available / GIB,
        "loader_ratio": ours["loader_samples_per_s"] / blog["loader_samples_per_s"],
        "ablations": ablations,
    }


def amortised_train_ratio(ours: dict[str, Any], blog: dict[str, Any], num_samples: int) -> float:
    """Blog loop time / our time to train the YAML's epochs over `num_samples`, our feature-cache build
    (measured on the same rows) included; without a cache, the per-step samples/s ratio."""
    epochs = ours["num_train_epochs"]
    blog_seconds = epochs * num_samples / blog["train_samples_per_s"]
    ours_seconds = epochs * num_samples / ours["train_samples_per_s"] + ours.get("cache_build_seconds", 0.0)
    return blog_seconds / ours_seconds


# --- report ---------------------------------------------------------------------------------------------


def _ratio(ours: float | None, blog: float | None) -> str:
    return f"{ours / blog:.2f}x" if ours and blog else "-"


def _row(name: str, blog_value: str, ours_value: str, ratio: str = "-") -> str:
    return f"| {name} | {blog_value} | {ours_value} | {ratio} |"


def _extra_rows(result: dict[str, Any]) -> list[str]:
    """Rows that only some runs have: the feature cache, the memory estimate, the ablations."""
    ours = result["ours"]
    lines: list[str] = []
    if "cache_build_seconds" in ours:
        rate = ours["cache_images"] / ours["cache_build_seconds"]
        lines.append(_row("feature cache build", "-", f"{ours['cache_images']} images, {rate:.3g} images/s"))
        lines.append(
            _row(
                f"train time for {ours['num_train_epochs']:g} epochs, cache build included",
                "-",
                "-",
                f"{result['train_ratio']:.2f}x",
            )
        )
    if "memory_estimate_gib" in result:
        estimate = result["memory_estimate_gib"]
        lines.append(
            _row(
                f"memory estimated before loading (GiB; {result['memory_available_gib']:.1f} free)",
                f"{estimate['seed']:.2f}",
                f"{estimate['ours']:.2f}",
            )
        )
    for name, ablation in result["ablations"].items():
        changes = ", ".join(f"{k}={v}" for k, v in ablation["changes"].items())
        lines.append(
            _row(
                f"ours without {name} ({changes}): train samples/s",
                "-",
                f"{ablation['train_samples_per_s']:.3g}",
                f"ours / variant: {ablation['ours_speedup']:.2f}x",
            )
        )
    return lines


def format_table(result: dict[str, Any]) -> str:
    """The benchmark as markdown: a header naming device, date and command, then ours vs the blog loop."""
    ours, blog, settings = result["ours"], result["seed"], result["settings"]
    gib = 1024**3

    lines = [
        f"Florence-2-{settings['model_size']} (random weights), `{settings['mode']}`, batch {settings['batch_size']}, "
        f"{settings['steps']} timed steps after {settings['warmup_steps']} warm-up, "
        f"{settings['eval_samples']} eval samples x {settings['eval_max_new_tokens']} new tokens",
        f"Device: {result['device']}; date: {result['date']}",
        f"Command: `{result['command']}`",
        f"MFU peak: {result['peak_tflops']:.3g} TFLOP/s ({result['peak_source']})",
        "",
        "| metric | blog loop | ours (recipe) | ours / blog |",
        "|---|---|---|---|",
        _row("precision", blog["precision"], ours["precision"]),
    ]

    def measured(name: str, key: str, fmt: str, scale: float = 1.0) -> str:
        return _row(
            name,
            format(blog[key] / scale, fmt),
            format(ours[key] / scale, fmt),
            _ratio(ours[key], blog[key]),
        )

    lines += [
        measured("train samples/s", "train_samples_per_s", ".3g"),
        measured("train tokens/s", "train_tokens_per_s", ".4g"),
        measured("TFLOP per step (counted, mean of the timed steps)", "flops_per_step", ".3g", 1e12),
        _row("MFU", f"{blog['mfu']:.1%}", f"{ours['mfu']:.1%}"),
        measured("peak memory (GiB)", "peak_memory_bytes", ".2f", gib),
        measured("data loader samples/s", "loader_samples_per_s", ".3g"),
        measured(f"eval samples/s ({BLOG_NUM_BEAMS} beams each)", "eval_samples_per_s", ".3g"),
        _row("eval generation", blog["eval_generation"], ours["eval_generation"]),
    ]
    for beams, rate in ours.get("eval_samples_per_s_by_beams", {}).items():
        if int(beams) != BLOG_NUM_BEAMS:
            lines.append(_row(f"eval samples/s, ours at {beams} beam(s) (the YAML's)", "-", f"{rate:.3g}"))
    lines += _extra_rows(result)
    return "\n".join(lines)
