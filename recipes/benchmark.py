"""Benchmark our DocVQA recipe path against the blog post's training loop, side by side, each in a fresh process.

    python recipes/benchmark.py --model-size base --mode frozen_vision --steps 3 --output results.json

Prints a markdown table (ours / blog loop ratios) and writes the JSON behind it. The model is a random-initialised
Florence-2 of the given size (speed does not depend on weight values) and the data synthetic DocVQA documents,
both built offline under --work-dir on first use. On CUDA ours runs the YAML's bf16; MFU divides by the
datasheet bf16 peak (H100/H200: 989 TFLOP/s); on CPU by the measured matmul peak unless --peak-tflops is given.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from florence_recipes.cli import run_recipe, setup_logging
from florence_recipes.configs.choices import TRAINING_MODES
from florence_recipes.tooling.benchmark import format_table, run_benchmark
from florence_recipes.tooling.benchmark_paths import ABLATIONS, MODEL_SIZES, BenchmarkSettings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-size", choices=MODEL_SIZES, required=True)
    parser.add_argument("--mode", choices=TRAINING_MODES, required=True)
    parser.add_argument("--steps", type=int, required=True, help="Timed training steps per path.")
    parser.add_argument("--output", type=Path, required=True, help="JSON file for the results.")
    parser.add_argument(
        "--warmup-steps",
        type=int,
        default=2,
        help="Untimed steps first. The first step of each batch shape pays one-off costs (allocator growth, "
        "kernel selection, torch.compile), and group_by_image batches of 2 come in two shapes: one image or two.",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="Per-device batch of both paths. Default: the blog's 6, or the largest below it that fits in memory "
        "(estimated before loading; a batch that does not fit stops with one that does).",
    )
    parser.add_argument("--eval-samples", type=int, default=None, help="Default: 6 on CPU, 128 on CUDA.")
    parser.add_argument(
        "--eval-max-new-tokens", type=int, default=16, help="Generated tokens per eval sample."
    )
    parser.add_argument(
        "--loader-batches", type=int, default=2, help="Batches timed for data-loader samples/s."
    )
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="Device peak for MFU (default: see above)."
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="Our recipe YAML (default: recipes/docvqa/<size>_<mode>.yaml, else base_<mode>.yaml).",
    )
    parser.add_argument(
        "--work-dir", type=Path, default=Path(".cache/benchmark"), help="Model, data and run folders."
    )
    parser.add_argument("--document-size", default="1240x1754", help="Synthetic document size WxH in pixels.")
    parser.add_argument(
        "--ablate",
        nargs="*",
        default=[],
        choices=sorted(ABLATIONS),
        help="Also time ours with this optimisation off.",
    )
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    setup_logging()
    width, _, height = args.document_size.partition("x")
    settings = BenchmarkSettings(
        model_size=args.model_size,
        mode=args.mode,
        steps=args.steps,
        warmup_steps=args.warmup_steps,
        batch_size=args.batch_size,
        eval_samples=args.eval_samples,
        eval_max_new_tokens=args.eval_max_new_tokens,
        loader_batches=args.loader_batches,
        peak_tflops=args.peak_tflops,
        config=args.config,
        work_dir=args.work_dir,
        document_size=(int(width), int(height)),
        ablate=args.ablate,
    )
    result = run_benchmark(settings, command=shlex.join(["python", *sys.argv]))
    print(format_table(result))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"\nResults written to {args.output}")


if __name__ == "__main__":
    run_recipe(main)
