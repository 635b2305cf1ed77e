"""One prepared command that checks and measures every CUDA path of the recipes: `recipes/gpu_check.py`.

A GPU may come for minutes only, so the command must not break and must fit its time: every check runs in a
process of its own (forked from the command's process, which imported the libraries once and never
initialises CUDA before the last check), so an
out-of-memory error, a CUDA fault or a hang ends that check alone, recorded with a one-line reason, and the
next check still runs. A global time budget bounds the whole command; checks it leaves no time for are recorded
as not run.

The measurements reuse `florence_recipes.benchmark` (the same recipe path, blog loop, step timer, FLOP counter
and peak memory), on its random-initialised Florence-2 and synthetic DocVQA documents: offline.

`--dry-run` runs every check at tiny size on the CPU (Florence-2 "tiny", small documents, one timed step), with
the CPU stand-in of what needs CUDA (gloo instead of NCCL, fp32 instead of bf16 where the CPU emulates it) or a
"skipped on CPU dry run" reason where there is none (flash-attention), so the command is exercised in CI.
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import importlib.util
import json
import multiprocessing
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForImageTextToText

from florence_recipes.configs.model import ModelArguments
from florence_recipes.errors import RecipeError, first_line
from florence_recipes.models.loading import apply_training_mode, load_model, load_processor
from florence_recipes.tooling.benchmark import amortised_train_ratio
from florence_recipes.tooling.benchmark_paths import (
    BenchmarkData,
    BenchmarkSettings,
    blog_eval_rates,
    parse_yaml_value,
    prepare_data,
    run_blog_loop,
    run_ours,
)
from florence_recipes.tooling.blog_loop import BLOG_LEARNING_RATE, BLOG_NUM_BEAMS
from florence_recipes.tooling.measure import device_description, measure_matmul_tflops, resolve_peak_tflops
from florence_recipes.tooling.memory import GIB

REPO_ROOT = Path(__file__).resolve().parents[2]
RECIPES_DIR = REPO_ROOT / "recipes" / "docvqa"
ACCELERATE_CONFIGS = REPO_ROOT / "accelerate_configs"
STATUSES = ("ok", "failed", "skipped", "not run")


class SkipCheck(Exception):
    """A check that cannot run here (a missing package, no CUDA on a dry run); its message is the reason."""


@dataclass
class CheckPlan:
    """Sizes of every check: real sizes on a GPU, tiny ones on a CPU dry run."""

    dry_run: bool
    work_dir: Path
    time_budget_s: float
    peak_tflops: float | None = None

    @property
    def device(self) -> torch.device:
        return torch.device("cpu" if self.dry_run else "cuda")

    def size(self, size: str) -> str:
        return "tiny" if self.dry_run else size

    @property
    def steps(self) -> int:
        return 1 if self.dry_run else 8

    @property
    def warmup_steps(self) -> int:
        return 1 if self.dry_run else 2

    @property
    def eval_samples(self) -> int:
        return 3 if self.dry_run else 48

    @property
    def eval_max_new_tokens(self) -> int:
        return 4 if self.dry_run else 16

    @property
    def document_size(self) -> tuple[int, int]:
        return (320, 452) if self.dry_run else (1240, 1754)

    @property
    def batch_search_limit(self) -> int:
        # No out-of-memory error to find on a CPU dry run: the search only has to run its code.
        return 4 if self.dry_run else 512

    @property
    def loader_batches(self) -> int:
        return 2 if self.dry_run else 40

    def check_timeout(self, name: str) -> float:
        return (240.0 if self.dry_run else 120.0) * CHECK_WEIGHTS.get(name, 1.0)

    def benchmark_settings(
        self, size: str, mode: str, batch_size: int | None = None, **extra: Any
    ) -> BenchmarkSettings:
        values: dict[str, Any] = {
            "model_size": self.size(size),
            "mode": mode,
            "steps": self.steps,
            "warmup_steps": self.warmup_steps,
            "batch_size": batch_size,
            "eval_samples": self.eval_samples,
            "eval_max_new_tokens": self.eval_max_new_tokens,
            "loader_batches": 1,
            "peak_tflops": self.peak_tflops,
            "work_dir": self.work_dir / "benchmark",
            "document_size": self.document_size,
            **extra,
        }
        # The recipe YAML of the real size, also on a dry run: its precision, optimizer and speed switches.
        values["config"] = yaml_for(size, mode)
        if values["batch_size"] is None:
            values["batch_size"] = yaml_batch(size, mode)
        return BenchmarkSettings(**values)


def yaml_for(size: str, mode: str) -> Path:
    sized = RECIPES_DIR / f"{size}_{mode}.yaml"
    return sized if sized.is_file() else RECIPES_DIR / f"base_{mode}.yaml"


def yaml_batch(size: str, mode: str) -> int:
    return int(parse_yaml_value(yaml_for(size, mode), "per_device_train_batch_size", 8))


# --- helpers shared by the checks ---------------------------------------------------------------------------


def _peak(plan: CheckPlan) -> float:
    if plan.dry_run and plan.peak_tflops is None:
        # A short fp32 matmul measurement instead of the benchmark's longer one: MFU of a tiny model is no goal.
        return measure_matmul_tflops(plan.device, torch.float32, 512)
    return resolve_peak_tflops(plan.device, plan.peak_tflops)[0]


def _run_dir(plan: CheckPlan, name: str) -> Path:
    return plan.work_dir / "runs" / name


def _data(plan: CheckPlan, settings: BenchmarkSettings) -> BenchmarkData:
    return prepare_data(settings, settings.eval_samples)


def _train_summary(result: dict[str, Any]) -> dict[str, Any]:
    return {
        "samples_per_s": result["train_samples_per_s"],
        "mfu": result["mfu"],
        "peak_memory_gib": result["peak_memory_bytes"] / GIB,
        "precision": result["precision"],
    }


def _release(plan: CheckPlan) -> None:
    gc.collect()
    if plan.device.type == "cuda":
        torch.cuda.empty_cache()


def _is_out_of_memory(err: BaseException) -> bool:
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
    processor = load_processor(model_args)
    rows = data.train_rows.select(range(min(4, len(data.train_rows))))
    inputs = processor(
        text=list(rows["prompt"]), images=list(rows["image"]), return_tensors="pt", padding=True
    )
    labels = processor.tokenizer(list(rows["target"]), return_tensors="pt", padding=True)["input_ids"]
    labels[labels == processor.tokenizer.pad_token_id] = -100
    base = {"input_ids": inputs["input_ids"], "pixel_values": inputs["pixel_values"], "labels": labels}
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
        repeats = -(-batch // len(rows))
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
            if not _is_out_of_memory(err):
                raise
            return False
        finally:
            optimizer.zero_grad(set_to_none=True)
            del tensors
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.empty_cache()

    return fits


def _search(plan: CheckPlan, size: str, mode: str, blog: bool) -> dict[str, Any]:
    settings = plan.benchmark_settings(size, mode, batch_size=1)
    data = _data(plan, settings)
    fits = training_step_probe(plan, data, size, mode, blog)
    batch, capped = largest_fitting_batch(fits, yaml_batch(size, mode), plan.batch_search_limit)
    if batch < 1:
        raise RecipeError(f"not even batch 1 fits for {plan.size(size)} {mode}")
    return {"largest_batch": batch, "search_capped": capped}


# --- the checks ---------------------------------------------------------------------------------------------


def check_base_full(plan: CheckPlan, earlier: dict[str, Any]) -> dict[str, Any]:
    """Base full fine-tuning at the YAML's batch vs the blog loop at the largest batch it fits."""
    settings = plan.benchmark_settings("base", "full")
    ours = run_ours(
        settings, _data(plan, settings), plan.device, _peak(plan), _run_dir(plan, "base_full"), eval_beams=()
    )
    _release(plan)
    blog_batch = _search(plan, "base", "full", blog=True)["largest_batch"]
    _release(plan)
    blog_settings = dataclasses.replace(settings, batch_size=blog_batch)
    blog = run_blog_loop(blog_settings, _data(plan, blog_settings), plan.device, _peak(plan), eval_beams=())
    ratio = ours["train_samples_per_s"] / blog["train_samples_per_s"]
    values = {
        "batch": settings.batch_size,
        **_train_summary(ours),
        "blog_batch": blog_batch,
        "blog_samples_per_s": blog["train_samples_per_s"],
        "ratio_to_blog": ratio,
    }
    values["summary"] = (
        f"batch {settings.batch_size}: {ours['train_samples_per_s']:.3g} samples/s, MFU {ours['mfu']:.1%}, peak "
        f"{values['peak_memory_gib']:.2f} GiB; {ratio:.2f}x the blog loop at its largest batch {blog_batch}"
    )
    return values


def _check_max_batch(size: str) -> Callable[[CheckPlan, dict[str, Any]], dict[str, Any]]:
    def check(plan: CheckPlan, earlier: dict[str, Any]) -> dict[str, Any]:
        values = _search(plan, size, "full", blog=False)
        capped = " (search stopped at its limit)" if values["search_capped"] else ""
        values["summary"] = (
            f"largest per-GPU batch of {size} full (ours, one step): {values['largest_batch']}{capped}"
        )
        return values

    check.__doc__ = f"Largest per-GPU batch of {size} full fine-tuning that fits."
    return check


def _check_partial(mode: str) -> Callable[[CheckPlan, dict[str, Any]], dict[str, Any]]:
    def check(plan: CheckPlan, earlier: dict[str, Any]) -> dict[str, Any]:
        settings = plan.benchmark_settings("base", mode)
        data = _data(plan, settings)
        ours = run_ours(settings, data, plan.device, _peak(plan), _run_dir(plan, mode), eval_beams=())
        if plan.device.type == "cuda":
            torch.cuda.empty_cache()
        blog = run_blog_loop(settings, data, plan.device, _peak(plan), eval_beams=())
        epochs = ours["num_train_epochs"]
        samples = len(data.train_rows)
        values = {
            **_train_summary(ours),
            "batch": settings.batch_size,
            "ratio_per_step": ours["train_samples_per_s"] / blog["train_samples_per_s"],
            "ratio_amortised": amortised_train_ratio(ours, blog, samples),
            "cache_build_seconds": ours.get("cache_build_seconds", 0.0),
            "end_to_end_seconds": epochs * samples / ours["train_samples_per_s"]
            + ours.get("cache_build_seconds", 0.0),
            "blog_end_to_end_seconds": epochs * samples / blog["train_samples_per_s"],
            "samples": samples,
            "epochs": epochs,
        }
        cache = (
            f"cache build {values['cache_build_seconds']:.1f} s included; "
            if "cache_build_seconds" in ours
            else ""
        )
        values["summary"] = (
            f"{epochs:g} epochs x {samples} samples: {values['end_to_end_seconds']:.1f} s vs blog "
            f"{values['blog_end_to_end_seconds']:.1f} s ({cache}{values['ratio_amortised']:.2f}x); per step "
            f"{values['ratio_per_step']:.2f}x, {ours['train_samples_per_s']:.3g} samples/s"
        )
        return values

    check.__doc__ = f"Base {mode} end to end (feature cache build included) vs the blog loop."
    return check


def check_large_full(plan: CheckPlan, earlier: dict[str, Any]) -> dict[str, Any]:
    """Large full fine-tuning at the YAML's batch."""
    settings = plan.benchmark_settings("large", "full")
    ours = run_ours(
        settings, _data(plan, settings), plan.device, _peak(plan), _run_dir(plan, "large_full"), eval_beams=()
    )
    values = {"batch": settings.batch_size, **_train_summary(ours)}
    values["summary"] = (
        f"batch {settings.batch_size}: {values['samples_per_s']:.3g} samples/s, MFU {values['mfu']:.1%}, "
        f"peak {values['peak_memory_gib']:.2f} GiB"
    )
    return values


def check_attention(plan: CheckPlan, earlier: dict[str, Any]) -> dict[str, Any]:
    """sdpa vs flash_attention_2 on base full."""
    if importlib.util.find_spec("flash_attn") is None:
        raise SkipCheck("flash-attn not installed")
    if plan.device.type != "cuda":
        raise SkipCheck("skipped on CPU dry run: flash-attention needs CUDA")
    settings = plan.benchmark_settings("base", "full")
    data = _data(plan, settings)
    rates = {}
    for implementation in ("sdpa", "flash_attention_2"):
        result = run_ours(
            settings, data, plan.device, _peak(plan), _run_dir(plan, f"attention-{implementation}"),
            {"attn_implementation": implementation}, eval_beams=(),
        )  # fmt: skip
        rates[implementation] = result["train_samples_per_s"]
        torch.cuda.empty_cache()
    ratio = rates["flash_attention_2"] / rates["sdpa"]
    return {
        "sdpa_samples_per_s": rates["sdpa"],
        "flash_attention_2_samples_per_s": rates["flash_attention_2"],
        "summary": f"sdpa {rates['sdpa']:.3g}, flash_attention_2 {rates['flash_attention_2']:.3g} samples/s ({ratio:.2f}x)",
    }


def check_torch_compile(plan: CheckPlan, earlier: dict[str, Any]) -> dict[str, Any]:
    """torch_compile off vs on (base full); compile time = first-step time on minus off."""
    settings = plan.benchmark_settings("base", "full")
    data = _data(plan, settings)
    # A dry run captures graphs with TorchDynamo but skips Inductor's C++ code generation (minutes on 2 cores).
    compiled = {"torch_compile": True}
    if plan.dry_run:
        compiled["torch_compile_backend"] = "eager"
    runs = {}
    for name, changes in (("off", {}), ("on", compiled)):
        runs[name] = run_ours(
            settings,
            data,
            plan.device,
            _peak(plan),
            _run_dir(plan, f"compile-{name}"),
            changes,
            eval_beams=(),
        )
        if plan.device.type == "cuda":
            torch.cuda.empty_cache()
    compile_seconds = runs["on"]["first_step_seconds"] - runs["off"]["first_step_seconds"]
    off, on = runs["off"]["train_samples_per_s"], runs["on"]["train_samples_per_s"]
    backend = compiled.get("torch_compile_backend", "inductor")
    return {
        "off_samples_per_s": off,
        "on_samples_per_s": on,
        "speedup": on / off,
        "compile_seconds": compile_seconds,
        "backend": backend,
        "summary": f"off {off:.3g}, on ({backend}) {on:.3g} samples/s ({on / off:.2f}x); compile {compile_seconds:.1f} s",
    }


def _check_distributed(accelerate_config: str) -> Callable[[CheckPlan, dict[str, Any]], dict[str, Any]]:
    def check(plan: CheckPlan, earlier: dict[str, Any]) -> dict[str, Any]:
        settings = plan.benchmark_settings("base", "full", batch_size=2)
        data = _data(plan, settings)
        output_dir = _run_dir(plan, accelerate_config.removesuffix(".yaml"))
        steps = 3
        launcher = [
            sys.executable, "-m", "accelerate.commands.launch", "--quiet",
            "--config_file", str(ACCELERATE_CONFIGS / accelerate_config),
            "--num_processes", "1", "--num_machines", "1", "--main_process_port", str(_free_port()),
        ]  # fmt: skip
        recipe = [
            "--config", str(yaml_for("base", "full")), "--model_name_or_path", str(data.model_dir),
            "--dataset_name", str(data.data_dir), "--output_dir", str(output_dir), "--overwrite_output_dir", "true",
            "--max_steps", str(steps), "--save_strategy", "steps", "--save_steps", str(steps),
            "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1", "--do_eval", "false",
            "--eval_strategy", "no", "--load_best_model_at_end", "false", "--logging_steps", "1",
            "--dataloader_num_workers", "0", "--report_to", "none", "--push_to_hub", "false",
        ]  # fmt: skip
        if plan.dry_run:
            # The CPU stand-in: gloo instead of NCCL, fp32 (the accelerate config's bf16 needs a GPU here).
            launcher += ["--mixed_precision", "no"]
            recipe += ["--bf16", "false"]
            if "deepspeed" in accelerate_config:
                recipe += ["--ddp_backend", "gloo"]
        command = [*launcher, str(REPO_ROOT / "recipes" / "docvqa.py"), *recipe]
        start = time.perf_counter()
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        completed = subprocess.run(
            command, cwd=REPO_ROOT, capture_output=True, text=True, check=False, env=env,
            timeout=plan.check_timeout(accelerate_config) - 5,
        )  # fmt: skip
        train_seconds = time.perf_counter() - start
        (plan.work_dir / "logs").mkdir(parents=True, exist_ok=True)
        (plan.work_dir / "logs" / f"{accelerate_config}.launch.log").write_text(
            completed.stdout + completed.stderr
        )
        if completed.returncode != 0:
            lines = [line for line in (completed.stderr or completed.stdout).splitlines() if line.strip()]
            raise RecipeError(f"launch exited {completed.returncode}: {lines[-1] if lines else 'no output'}")
        checkpoint = output_dir / f"checkpoint-{steps}"
        if not checkpoint.is_dir():
            raise RecipeError(f"no {checkpoint.name} saved in {output_dir}")
        # Reload the final model as a user would, and check it is whole and computes a finite loss.
        model, info = AutoModelForImageTextToText.from_pretrained(output_dir, output_loading_info=True)
        missing = info["missing_keys"]
        if missing:
            raise RecipeError(f"reloaded model misses {len(missing)} weights, e.g. {sorted(missing)[0]}")
        processor = load_processor(ModelArguments(model_name_or_path=str(output_dir)))
        row = data.train_rows[0]
        inputs = processor(text=[row["prompt"]], images=[row["image"]], return_tensors="pt")
        labels = processor.tokenizer([row["target"]], return_tensors="pt")["input_ids"]
        with torch.no_grad():
            loss = model(
                input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"], labels=labels
            ).loss
        if not torch.isfinite(loss):
            raise RecipeError(f"reloaded model gives a non-finite loss ({loss.item()})")
        backend = "gloo, CPU" if plan.dry_run else "NCCL, CUDA"
        return {
            "steps": steps,
            "launch_seconds": train_seconds,
            "reloaded_loss": loss.item(),
            "summary": f"1 process ({backend}): {steps} steps, {checkpoint.name} saved, final model reloaded "
            f"(loss {loss.item():.3g}) in {train_seconds:.0f} s",
        }

    check.__doc__ = f"One process under accelerate_configs/{accelerate_config}: train, save, reload."
    return check


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check_eval_generation(plan: CheckPlan, earlier: dict[str, Any]) -> dict[str, Any]:
    """Batched eval generation vs the blog's one example at a time, at equal beams: 3 and greedy."""
    settings = plan.benchmark_settings("base", "full", steps=1, warmup_steps=1)
    data = _data(plan, settings)
    beams = (BLOG_NUM_BEAMS, 1)
    ours = run_ours(settings, data, plan.device, _peak(plan), _run_dir(plan, "eval"), eval_beams=beams)
    ours_rates = ours["eval_samples_per_s_by_beams"]
    model_args = ModelArguments(model_name_or_path=str(data.model_dir))
    model = AutoModelForImageTextToText.from_pretrained(data.model_dir).to(plan.device)  # fp32, as the blog
    blog_rates = blog_eval_rates(
        model, load_processor(model_args), data.eval_rows, plan.device, settings.eval_max_new_tokens, beams
    )
    ratios = {b: ours_rates[b] / blog_rates[b] for b in beams}
    return {
        "samples": len(data.eval_rows),
        "ours_samples_per_s": ours_rates,
        "blog_samples_per_s": blog_rates,
        "ratio": ratios,
        "summary": "; ".join(
            f"{b} beam(s): ours {ours_rates[b]:.3g} vs blog {blog_rates[b]:.3g} samples/s ({ratios[b]:.2f}x)"
            for b in beams
        ),
    }


def check_dataloader(plan: CheckPlan, earlier: dict[str, Any]) -> dict[str, Any]:
    """The training DataLoader's sustained samples/s with the YAML's workers vs what training consumes."""
    settings = plan.benchmark_settings("base", "full", loader_batches=plan.loader_batches)
    ours = run_ours(
        settings, _data(plan, settings), plan.device, _peak(plan), _run_dir(plan, "loader"), eval_beams=()
    )
    loader = ours["loader_samples_per_s"]
    base_full = earlier.get("base_full", {})
    consumed = base_full.get("values", {}).get("samples_per_s") if base_full.get("status") == "ok" else None
    source = "base_full check"
    if consumed is None:
        consumed, source = ours["train_samples_per_s"], "this check's own steps"
    workers = ours["settings"]["dataloader_num_workers"]
    starved = loader < consumed
    return {
        "workers": workers,
        "loader_samples_per_s": loader,
        "train_samples_per_s": consumed,
        "starved": starved,
        "summary": f"{workers} workers: {loader:.3g} samples/s vs {consumed:.3g} consumed ({source}): "
        f"{'GPU STARVED' if starved else 'keeps up'} ({loader / consumed:.2f}x)",
    }


# Order: what a first GPU run most needs first; the time budget may not reach the end.
CHECKS: dict[str, Callable[[CheckPlan, dict[str, Any]], dict[str, Any]]] = {
    "base_full": check_base_full,
    "max_batch_base_full": _check_max_batch("base"),
    "max_batch_large_full": _check_max_batch("large"),
    "frozen_vision": _check_partial("frozen_vision"),
    "lora": _check_partial("lora"),
    "large_full": check_large_full,
    "attention": check_attention,
    "torch_compile": check_torch_compile,
    "deepspeed_zero2.yaml": _check_distributed("deepspeed_zero2.yaml"),
    "deepspeed_zero3.yaml": _check_distributed("deepspeed_zero3.yaml"),
    "fsdp.yaml": _check_distributed("fsdp.yaml"),
    "eval_generation": check_eval_generation,
    "dataloader": check_dataloader,
}
# Relative time limits (x the per-check base limit).
CHECK_WEIGHTS = {"base_full": 1.5, "torch_compile": 1.5, "eval_generation": 1.25}


# --- isolation and the report -------------------------------------------------------------------------------


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
