"""One prepared command that checks and measures every CUDA path of the recipes: `recipes/gpu_check.py`.

A GPU may come for minutes only, so the command must not break and must fit its time: every check runs in a
process of its own (forked from the command's process, which imported the libraries once and never
initialises CUDA before the last check), so an
out-of-memory error, a CUDA fault or a hang ends that check alone, recorded with a one-line reason, and the
next check still runs. A global time budget bounds the whole command; checks it leaves no time for are recorded
as not run.

The measurements reuse the benchmark (`florence_recipes.tooling.benchmark_paths`, `measure`) (the same recipe path, blog loop, step timer, FLOP counter
and peak memory), on its random-initialised Florence-2 and synthetic DocVQA documents: offline.

`--dry-run` runs every check at tiny size on the CPU (Florence-2 "tiny", small documents, one timed step), with
the CPU stand-in of what needs CUDA (gloo instead of NCCL, fp32 instead of bf16 where the CPU emulates it) or a
"skipped on CPU dry run" reason where there is none (flash-attention), so the command is exercised in CI.
"""

from __future__ import annotations

import datetime
import json
import multiprocessing
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from florence_recipes.errors import RecipeError, first_line
from florence_recipes.tooling.gpu_checks import CHECKS
from florence_recipes.tooling.gpu_plan import STATUSES, CheckPlan, SkipCheck
from florence_recipes.tooling.measure import device_description


def _child(name: str, plan: CheckPlan, earlier: dict[str, Any], result_path: Path, log_path: Path) -> None:
    """Body of a check's process: its output goes to its log file, its result to `result_path`."""
    log = open(log_path, "w", buffering=1)  # noqa: SIM115 - stays open until the process exits
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log
    try:
        result = {"status": "ok", "values": CHECKS[name](plan, earlier)}
    except SkipCheck as err:
        result = {"status": "skipped", "reason": str(err)}
    except BaseException as err:  # any failure is this check's result, not the command's
        traceback.print_exc()
        result = {"status": "failed", "reason": f"{type(err).__name__}: {first_line(err)}"}
    result_path.write_text(json.dumps(result, default=str))


def _last_line(path: Path) -> str:
    if not path.is_file():
        return "no output"
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][-300:] if lines else "no output"


def run_isolated(
    name: str, plan: CheckPlan, earlier: dict[str, Any], timeout_s: float, context: Any
) -> dict[str, Any]:
    """Run one check in its own process; a crash, a kill or a timeout becomes a one-line failure."""
    results_dir, logs_dir = plan.work_dir / "results", plan.work_dir / "logs"
    results_dir.mkdir(parents=True, exist_ok=True)
    logs_dir.mkdir(parents=True, exist_ok=True)
    result_path, log_path = results_dir / f"{name}.json", logs_dir / f"{name}.log"
    result_path.unlink(missing_ok=True)
    start = time.perf_counter()
    process = context.Process(target=_child, args=(name, plan, earlier, result_path, log_path))
    sys.stdout.flush()  # a forked child must not inherit (and later write out) the parent's buffered output
    sys.stderr.flush()
    process.start()
    process.join(timeout_s)
    if process.is_alive():
        process.kill()
        process.join()
        result = {
            "status": "failed",
            "reason": f"timed out after {timeout_s:.0f} s (last output: {_last_line(log_path)})",
        }
    elif result_path.is_file():
        result = json.loads(result_path.read_text())
    else:
        killed = " (killed: out of memory?)" if process.exitcode == -9 else ""
        result = {
            "status": "failed",
            "reason": f"process died with exit code {process.exitcode}{killed}; last output: {_last_line(log_path)}",
        }
    result["seconds"] = time.perf_counter() - start
    result["log"] = str(log_path)
    return result


def run_checks(plan: CheckPlan, names: list[str] | None = None, command: str = "") -> dict[str, Any]:
    names = list(CHECKS) if names is None else names
    unknown = [name for name in names if name not in CHECKS]
    if unknown:
        raise RecipeError(f"--checks {', '.join(unknown)}: valid: {', '.join(CHECKS)}")
    # Ask NVML, not the CUDA runtime: this process must stay CUDA-free for its checks to fork safely.
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
    if not plan.dry_run and not torch.cuda.is_available():
        raise RecipeError("no CUDA device: run on a GPU machine, or pass --dry-run for the CPU rehearsal")
    plan.work_dir.mkdir(parents=True, exist_ok=True)
    # Checks are forked from this process, which imported the libraries once and computes nothing itself: no
    # CUDA context (NVML answered `is_available` above) and no OpenMP thread pool, neither of which survives a
    # fork. Each check starts in a second instead of re-importing, and a failure in one cannot leak into the next.
    context = multiprocessing.get_context("fork")
    deadline = time.perf_counter() + plan.time_budget_s
    results: dict[str, Any] = {}
    started = time.perf_counter()
    for name in names:
        remaining = deadline - time.perf_counter()
        if remaining < 10:
            results[name] = {
                "status": "not run",
                "reason": f"time budget of {plan.time_budget_s:.0f} s spent",
            }
            continue
        results[name] = run_isolated(name, plan, results, min(plan.check_timeout(name), remaining), context)
        print(format_row(name, results[name]), flush=True)
    device = torch.device("cpu") if plan.dry_run else torch.device("cuda")
    return {
        "device": device_description(device),  # initialises CUDA here: after the last check has forked
        "dry_run": plan.dry_run,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "seconds": time.perf_counter() - started,
        "time_budget_s": plan.time_budget_s,
        "checks": results,
    }


def format_row(name: str, result: dict[str, Any]) -> str:
    detail = result.get("values", {}).get("summary") or result.get("reason", "")
    seconds = f"{result['seconds']:.0f}" if "seconds" in result else "-"
    return f"| {name} | {result['status']} | {detail.replace('|', '/')} | {seconds} |"


def format_report(report: dict[str, Any]) -> str:
    counts = {status: 0 for status in STATUSES}
    for result in report["checks"].values():
        counts[result["status"]] += 1
    lines = [
        f"GPU check{' (CPU dry run, tiny sizes)' if report['dry_run'] else ''}: {report['device']}; {report['date']}",
        f"Command: `{report['command']}`; {report['seconds']:.0f} s of a {report['time_budget_s']:.0f} s budget; "
        + ", ".join(f"{count} {status}" for status, count in counts.items()),
        "",
        "| check | status | result | seconds |",
        "|---|---|---|---|",
        *(format_row(name, result) for name, result in report["checks"].items()),
    ]
    return "\n".join(lines)
