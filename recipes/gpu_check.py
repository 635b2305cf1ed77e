"""Check and measure every CUDA path of the recipes in one command, offline, in under 8 minutes on one GPU.

    python recipes/gpu_check.py --output gpu_check.json          # on one H100/H200
    python recipes/gpu_check.py --dry-run --output x.json        # CPU rehearsal at tiny size (CI)

Each check runs in its own process: a failure (out of memory, a CUDA error, a hang) is recorded with a one-line
reason and the next check still runs. Writes the JSON and a markdown table next to it (same name, .md).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from florence_recipes.cli import run_recipe, setup_logging
from florence_recipes.tooling.gpu_check import format_report, run_checks
from florence_recipes.tooling.gpu_checks import CHECKS
from florence_recipes.tooling.gpu_plan import CheckPlan


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", type=Path, required=True, help="JSON file for the results.")
    parser.add_argument("--dry-run", action="store_true", help="Every check at tiny size on the CPU.")
    parser.add_argument(
        "--checks", nargs="*", default=None, choices=list(CHECKS), help="Default: all, in order."
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        default=None,
        help="Seconds for all checks (default: 450 GPU, 600 dry run).",
    )
    parser.add_argument("--work-dir", type=Path, default=Path(".cache/gpu_check"), help="Models, data, logs.")
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="Device peak for MFU (default: datasheet)."
    )
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    setup_logging()
    budget = args.time_budget or (600.0 if args.dry_run else 450.0)
    plan = CheckPlan(
        dry_run=args.dry_run, work_dir=args.work_dir, time_budget_s=budget, peak_tflops=args.peak_tflops
    )
    report = run_checks(plan, args.checks, command=shlex.join(["python", *sys.argv]))
    table = format_report(report)
    print(table)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    args.output.with_suffix(".md").write_text(table + "\n", encoding="utf-8")
    print(f"\nResults written to {args.output} and {args.output.with_suffix('.md')}")


if __name__ == "__main__":
    run_recipe(main)
