"""The GPU check command rehearsed on the CPU (so it cannot rot before a GPU arrives), its isolation of failing
checks, the batch search, the memory estimate that stops the benchmark before a kill, the honest ratios, and the
CPU precision default (`cpu_bf16`)."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT
from transformers import AutoProcessor

from florence_recipes.configs import training as configs
from florence_recipes.configs.model import ModelArguments
from florence_recipes.configs.training import FlorenceTrainingArguments
from florence_recipes.data.collator import Florence2Collator
from florence_recipes.errors import RecipeError
from florence_recipes.models.loading import load_model
from florence_recipes.tooling import gpu_check
from florence_recipes.tooling.benchmark import amortised_train_ratio
from florence_recipes.tooling.benchmark_paths import BenchmarkSettings, prepare_data
from florence_recipes.tooling.gpu_check import run_isolated
from florence_recipes.tooling.gpu_plan import CheckPlan, SkipCheck
from florence_recipes.tooling.gpu_probes import largest_fitting_batch
from florence_recipes.tooling.memory import (
    GIB,
    USABLE_FRACTION,
    MemoryEstimate,
    estimate_training_memory,
    resolve_batch_size,
)


# 169 s on a quiet 2-core machine (13 checks; the three accelerate launches of the distributed checks are 98 s of
# it): too long for the default suite's budget, so `.ci/run` runs it as a step of its own after the suite, and
# the command cannot rot before a GPU comes.
@pytest.mark.slow
def test_dry_run_runs_every_check_and_writes_json_and_table(tmp_path: Path) -> None:
    output = tmp_path / "x.json"
    command = [
        sys.executable, str(REPO_ROOT / "recipes" / "gpu_check.py"), "--dry-run", "--output", str(output),
        "--work-dir", str(tmp_path / "work"), "--time-budget", "1700",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=1800, check=False)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    report = json.loads(output.read_text())
    assert report["dry_run"] is True and report["device"]
    assert list(report["checks"]) == list(gpu_check.CHECKS)
    failed = {name: r.get("reason") for name, r in report["checks"].items() if r["status"] != "ok"}
    # Only flash-attention has no CPU stand-in.
    assert set(failed) == {"attention"}, failed
    assert failed["attention"].startswith(("flash-attn not installed", "skipped on CPU dry run"))
    checks = report["checks"]
    assert (
        checks["base_full"]["values"]["samples_per_s"] > 0
        and checks["base_full"]["values"]["ratio_to_blog"] > 0
    )
    assert checks["max_batch_base_full"]["values"]["largest_batch"] == 4  # the dry run's search limit
    assert checks["frozen_vision"]["values"]["cache_build_seconds"] > 0
    assert set(checks["eval_generation"]["values"]["ratio"]) == {"3", "1"}  # equal beams: 3 and greedy
    for name in ("deepspeed_zero2.yaml", "deepspeed_zero3.yaml", "fsdp.yaml"):
        assert "reloaded" in checks[name]["values"]["summary"], name
    table = output.with_suffix(".md").read_text()
    for name in gpu_check.CHECKS:
        assert f"| {name} |" in table
    assert "| attention | skipped |" in table


def _crashing_check(plan: CheckPlan, earlier: dict) -> dict:
    os._exit(3)  # what a CUDA fault or a kernel kill looks like from outside: no Python exception


def _raising_check(plan: CheckPlan, earlier: dict) -> dict:
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")


def _hanging_check(plan: CheckPlan, earlier: dict) -> dict:
    time.sleep(60)
    return {}


def _skipping_check(plan: CheckPlan, earlier: dict) -> dict:
    raise SkipCheck("flash-attn not installed")


def _passing_check(plan: CheckPlan, earlier: dict) -> dict:
    return {"summary": f"saw {sorted(earlier)}"}


def test_a_failing_check_is_one_line_and_the_next_still_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks = {
        "crash": _crashing_check,
        "oom": _raising_check,
        "hang": _hanging_check,
        "skip": _skipping_check,
        "after": _passing_check,
    }
    monkeypatch.setattr(gpu_check, "CHECKS", checks)
    plan = CheckPlan(dry_run=True, work_dir=tmp_path, time_budget_s=60)
    context = multiprocessing.get_context("fork")  # inherits the patched CHECKS
    results: dict = {}
    for name in checks:
        results[name] = run_isolated(name, plan, results, 3 if name == "hang" else 60, context)
    assert results["crash"]["status"] == "failed"
    assert results["crash"]["reason"].startswith("process died with exit code 3")
    assert results["oom"] == {**results["oom"], "status": "failed"}
    assert results["oom"]["reason"] == "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert results["hang"]["status"] == "failed" and results["hang"]["reason"].startswith(
        "timed out after 3 s"
    )
    assert results["skip"]["status"] == "skipped" and results["skip"]["reason"] == "flash-attn not installed"
    assert results["after"]["status"] == "ok"
    assert results["after"]["values"]["summary"] == "saw ['crash', 'hang', 'oom', 'skip']"


@pytest.mark.parametrize(("largest", "limit", "expected"), [(13, 64, (13, False)), (64, 64, (64, True)),
                                                          (0, 64, (0, False)), (1, 64, (1, False)),
                                                          (100, 64, (64, True)), (7, 8, (7, False))])  # fmt: skip
def test_batch_search_finds_the_largest_batch_that_fits(largest: int, limit: int, expected: tuple) -> None:
    tried: list[int] = []

    def fits(batch: int) -> bool:
        tried.append(batch)
        return batch <= largest

    assert largest_fitting_batch(fits, 8, limit) == expected
    assert len(tried) <= 2 * limit.bit_length() + 2  # doubling then bisection, not a linear scan


def test_batch_that_does_not_fit_stops_with_one_that_does() -> None:
    estimates = {"seed": MemoryEstimate(4 * GIB, 3 * GIB), "ours": MemoryEstimate(5 * GIB, 2 * GIB)}
    available = 24 * GIB  # planning with 90 %: 21.6 GiB -> blog (4 + 3b) fits b = 5, ours (5 + 2b) b = 8
    assert resolve_batch_size(None, estimates, available, torch.device("cpu")) == 5  # the blog's 6 lowered
    assert resolve_batch_size(2, estimates, available, torch.device("cpu")) == 2
    with pytest.raises(RecipeError) as raised:
        resolve_batch_size(6, estimates, available, torch.device("cpu"))
    message = str(raised.value)
    assert "\n" not in message and message.startswith("--batch-size 6: the blog loop needs about 22.0 GiB")
    assert message.endswith("--batch-size 5 fits")
    with pytest.raises(RecipeError, match="no batch fits"):
        resolve_batch_size(None, estimates, 4 * GIB, torch.device("cpu"))
    assert USABLE_FRACTION < 1


def test_memory_estimate_counts_states_and_activations(tmp_path: Path) -> None:
    settings = BenchmarkSettings(
        model_size="tiny", mode="full", steps=1, batch_size=1, loader_batches=1, work_dir=tmp_path,
        document_size=(320, 452),
    )  # fmt: skip
    data = prepare_data(settings, 1)
    estimates = estimate_training_memory(data, "full", torch.device("cpu"), settings.recipe_config())
    parameters = sum(p.numel() for p in load_model(ModelArguments(str(data.model_dir))).parameters())
    assert estimates["seed"].fixed_bytes == 16 * parameters  # fp32 weights + grads + 2 AdamW states
    # + autocast's bf16 weight copies where the YAML's bf16 runs as autocast (not on a CPU that emulates bf16)
    copies = 2 if configs.cpu_bf16_wanted("auto") else 0
    assert estimates["ours"].fixed_bytes == (16 + copies) * parameters
    # Activations of one 128 px sample of the tiny model: more than its image, far less than a GiB.
    assert 3 * 128 * 128 * 4 < estimates["seed"].per_sample_bytes < GIB


def test_cache_build_is_amortised_over_the_yaml_epochs() -> None:
    blog = {"train_samples_per_s": 1.0}
    ours = {"train_samples_per_s": 4.0, "num_train_epochs": 7, "cache_build_seconds": 30.0}
    # 60 samples x 7 epochs: blog 420 s; ours 105 s + 30 s cache build.
    assert amortised_train_ratio(ours, blog, 60) == pytest.approx(420 / 135)
    assert amortised_train_ratio({**ours, "cache_build_seconds": 0.0}, blog, 60) == pytest.approx(4.0)


@pytest.mark.parametrize(("choice", "native", "expected"), [("auto", False, False), ("auto", True, True),
                                                           ("true", False, True), ("false", True, False)])  # fmt: skip
def test_cpu_bf16_default_follows_the_cpu(
    choice: str, native: bool, expected: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(configs, "cpu_has_native_bf16", lambda: native)
    args = FlorenceTrainingArguments(output_dir=str(tmp_path), use_cpu=True, bf16=True, cpu_bf16=choice)
    assert args.bf16 is expected


def test_fp32_on_cpu_trains_what_bf16_autocast_trains(tiny_model_dir: Path, train_rows) -> None:
    """The CPU default (fp32 where bf16 is emulated) and the GPU default (bf16 autocast) compute the same loss
    and gradients up to bf16 rounding. bf16 keeps 8 mantissa bits (relative step 2^-8 = 0.4 %) and a few layers
    accumulate a few steps of it: the loss agrees to 2 %, the whole gradient to 5 % (relative L2). Single
    tensors whose gradient is a sum of many cancelling terms (norm weights and biases: tens of elements) lose
    more relative precision (a cosine of 0.92 was seen for a 16-element norm weight), so each weight matrix (at
    least 1024 elements) has to point the same way (cosine > 0.95). A wrong cast or scaling gives O(1) differences.
    """
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    model = load_model(ModelArguments(str(tiny_model_dir)))
    model.train()
    for module in model.modules():  # the same dropout masks would need the same RNG draws in both runs
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    batch = Florence2Collator(processor)([train_rows[i] for i in range(4)])

    def loss_and_grads(bf16: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    fp32_loss, fp32_grads = loss_and_grads(False)
    bf16_loss, bf16_grads = loss_and_grads(True)
    torch.testing.assert_close(bf16_loss, fp32_loss, rtol=2e-2, atol=0)
    assert fp32_grads.keys() == bf16_grads.keys()
    fp32_all = torch.cat([grad.flatten() for grad in fp32_grads.values()])
    bf16_all = torch.cat([bf16_grads[name].flatten() for name in fp32_grads])
    assert (bf16_all - fp32_all).norm() / fp32_all.norm() < 5e-2
    for name, grad in fp32_grads.items():
        if grad.numel() >= 1024 and grad.norm() > 1e-6:
            cosine = torch.nn.functional.cosine_similarity(grad.flatten(), bf16_grads[name].flatten(), dim=0)
            assert cosine > 0.95, (name, cosine.item())
