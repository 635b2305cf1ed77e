"""Benchmark onnxruntime against PyTorch eager on the CPU: latency (batch 1) and throughput (batch 8), one run.

    python recipes/benchmark_onnx.py --model-size base --output outputs/benchmark_onnx.json

Builds a random-initialised Florence-2 of the given size under --work-dir (speed does not depend on weight
values) and exports it (fp32 and int8) on first use; every path then answers the same processed images greedily
with the same token limit. Prints a markdown table (with the machine, threads and load) and writes the JSON.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from florence_recipes.builders.model import ARCHITECTURES
from florence_recipes.cli import run_recipe, setup_logging
from florence_recipes.models.onnx_inference import require_onnx_extra


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-size", choices=sorted(ARCHITECTURES), default="base")
    parser.add_argument("--output", type=Path, required=True, help="JSON file for the results.")
    parser.add_argument("--throughput-batch", type=int, default=8, help="Batch of the throughput row.")
    parser.add_argument(
        "--max-new-tokens", type=int, default=16, help="Generated tokens per answer (at most)."
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="Timed runs per cell (median), after one batch-1 warm-up per path.",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch and onnxruntime threads (default: all)."
    )
    parser.add_argument(
        "--work-dir", type=Path, default=Path(".cache/benchmark-onnx"), help="Model and export folders."
    )
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    setup_logging()
    require_onnx_extra()
    from florence_recipes.tooling.onnx_benchmark import (
        OnnxBenchmarkSettings,
        format_table,
        run_onnx_benchmark,
    )

    settings = OnnxBenchmarkSettings(
        model_size=args.model_size,
        work_dir=args.work_dir,
        throughput_batch=args.throughput_batch,
        max_new_tokens=args.max_new_tokens,
        repeats=args.repeats,
        threads=args.threads,
    )
    result = run_onnx_benchmark(settings, command=shlex.join(["python", *sys.argv]))
    print(format_table(result))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"\nResults written to {args.output}")


if __name__ == "__main__":
    run_recipe(main)
