"""The checks of `recipes/gpu_check.py`, in the order a first GPU run most needs them (`CHECKS`)."""

from __future__ import annotations

import dataclasses
import importlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForImageTextToText

from florence_recipes.configs.model import ModelArguments
from florence_recipes.errors import RecipeError
from florence_recipes.models.loading import load_processor
from florence_recipes.tooling.benchmark import amortised_train_ratio
from florence_recipes.tooling.benchmark_ours import run_ours
from florence_recipes.tooling.benchmark_paths import blog_eval_rates, run_blog_loop
from florence_recipes.tooling.blog_loop import BLOG_NUM_BEAMS
from florence_recipes.tooling.gpu_plan import ACCELERATE_CONFIGS, REPO_ROOT, CheckPlan, SkipCheck, yaml_for
from florence_recipes.tooling.gpu_probes import (
    data_for,
    peak_of,
    release,
    run_dir,
    search_batch,
    train_summary,
)


def check_base_full(plan: CheckPlan, earlier: dict[str, Any]) -> dict[str, Any]:
    """Base full fine-tuning at the YAML's batch vs the blog loop at the largest batch it fits."""
    settings = plan.benchmark_settings("base", "full")
    ours = run_ours(
        settings,
        data_for(plan, settings),
        plan.device,
        peak_of(plan),
        run_dir(plan, "base_full"),
        eval_beams=(),
    )
    release(plan)
    blog_batch = search_batch(plan, "base", "full", blog=True)["largest_batch"]
    release(plan)
    blog_settings = dataclasses.replace(settings, batch_size=blog_batch)
    blog = run_blog_loop(
        blog_settings, data_for(plan, blog_settings), plan.device, peak_of(plan), eval_beams=()
    )
    ratio = ours["train_samples_per_s"] / blog["train_samples_per_s"]
    values = {
        "batch": settings.batch_size,
        **train_summary(ours),
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
        values = search_batch(plan, size, "full", blog=False)
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
        data = data_for(plan, settings)
        ours = run_ours(settings, data, plan.device, peak_of(plan), run_dir(plan, mode), eval_beams=())
        if plan.device.type == "cuda":
            torch.cuda.empty_cache()
        blog = run_blog_loop(settings, data, plan.device, peak_of(plan), eval_beams=())
        epochs = ours["num_train_epochs"]
        samples = len(data.train_rows)
        values = {
            **train_summary(ours),
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
        settings,
        data_for(plan, settings),
        plan.device,
        peak_of(plan),
        run_dir(plan, "large_full"),
        eval_beams=(),
    )
    values = {"batch": settings.batch_size, **train_summary(ours)}
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
    data = data_for(plan, settings)
    rates = {}
    for implementation in ("sdpa", "flash_attention_2"):
        result = run_ours(
            settings, data, plan.device, peak_of(plan), run_dir(plan, f"attention-{implementation}"),
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
    data = data_for(plan, settings)
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
            peak_of(plan),
            run_dir(plan, f"compile-{name}"),
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


def _launch_command(
    plan: CheckPlan, accelerate_config: str, data: Any, output_dir: Path, steps: int
) -> list[str]:
    """`accelerate launch` of the DocVQA recipe under `accelerate_config`: `steps` steps, one checkpoint."""
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
    return [*launcher, str(REPO_ROOT / "recipes" / "docvqa.py"), *recipe]


def _reloaded_loss(output_dir: Path, row: dict[str, Any]) -> float:
    """Reload the final model as a user would; it must be whole and compute a finite loss on `row`."""
    model, info = AutoModelForImageTextToText.from_pretrained(output_dir, output_loading_info=True)
    missing = info["missing_keys"]
    if missing:
        raise RecipeError(f"reloaded model misses {len(missing)} weights, e.g. {sorted(missing)[0]}")
    processor = load_processor(ModelArguments(model_name_or_path=str(output_dir)))
    inputs = processor(text=[row["prompt"]], images=[row["image"]], return_tensors="pt")
    labels = processor.tokenizer([row["target"]], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        loss = model(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"], labels=labels).loss
    if not torch.isfinite(loss):
        raise RecipeError(f"reloaded model gives a non-finite loss ({loss.item()})")
    return loss.item()


def _check_distributed(accelerate_config: str) -> Callable[[CheckPlan, dict[str, Any]], dict[str, Any]]:
    def check(plan: CheckPlan, earlier: dict[str, Any]) -> dict[str, Any]:
        data = data_for(plan, plan.benchmark_settings("base", "full", batch_size=2))
        output_dir = run_dir(plan, accelerate_config.removesuffix(".yaml"))
        steps = 3
        start = time.perf_counter()
        completed = subprocess.run(
            _launch_command(plan, accelerate_config, data, output_dir, steps), cwd=REPO_ROOT,
            capture_output=True, text=True, check=False, env={**os.environ, "HF_HUB_OFFLINE": "1"},
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
        loss = _reloaded_loss(output_dir, data.train_rows[0])
        backend = "gloo, CPU" if plan.dry_run else "NCCL, CUDA"
        return {
            "steps": steps,
            "launch_seconds": train_seconds,
            "reloaded_loss": loss,
            "summary": f"1 process ({backend}): {steps} steps, {checkpoint.name} saved, final model reloaded "
            f"(loss {loss:.3g}) in {train_seconds:.0f} s",
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
    data = data_for(plan, settings)
    beams = (BLOG_NUM_BEAMS, 1)
    ours = run_ours(settings, data, plan.device, peak_of(plan), run_dir(plan, "eval"), eval_beams=beams)
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
        settings, data_for(plan, settings), plan.device, peak_of(plan), run_dir(plan, "loader"), eval_beams=()
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
