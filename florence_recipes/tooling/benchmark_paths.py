"""What the benchmark's two training paths share — settings, the same random Florence-2 and synthetic DocVQA rows,
one result format — and the blog's path (`florence_recipes.tooling.blog_loop`); our recipe's path is
`florence_recipes.tooling.benchmark_ours`."""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from datasets import Dataset
from transformers import AutoModelForImageTextToText, set_seed

from florence_recipes.builders.datasets import write_synthetic_docvqa
from florence_recipes.builders.model import build_random_florence2
from florence_recipes.configs.choices import TRAINING_MODES
from florence_recipes.configs.model import ModelArguments
from florence_recipes.data.loading import column_values, load_task_split
from florence_recipes.data.tasks import get_task
from florence_recipes.errors import RecipeError
from florence_recipes.models.loading import (
    apply_training_mode,
    load_processor,
)
from florence_recipes.tooling.blog_loop import (
    BLOG_BATCH_SIZE,
    BLOG_NUM_BEAMS,
    blog_dataloader,
    blog_generate,
    blog_labels,
    blog_loss,
    blog_optimizer,
    blog_train_step,
)
from florence_recipes.tooling.measure import (
    PeakMemory,
    count_step_flops,
    loader_samples_per_s,
    synchronize,
)

MODEL_SIZES = ("tiny", "base", "large")
RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes" / "docvqa"
QUESTIONS_PER_DOCUMENT = 3  # DocVQA: ~39.5k questions over ~12k images
# Switch one optimisation of our path off per variant (`--ablate`): recipe keys and the values that disable it.
ABLATIONS: dict[str, dict[str, Any]] = {
    "feature_cache": {"feature_cache": "none"},
    "dedup": {"dedup_vision": False, "group_by_image": False},
    "bf16": {"bf16": False},
    "workers": {"dataloader_num_workers": 0},
    "fused_adamw": {"optim": "adamw_torch"},
    # CPU only: `bf16: true` as bf16 autocast even where the CPU emulates bf16 matmuls (cpu_bf16=auto: fp32 there).
    "cpu_fp32": {"cpu_bf16": "true"},
}


@dataclass
class BenchmarkSettings:
    model_size: str
    mode: str
    steps: int
    warmup_steps: int = 2  # both shapes of group_by_image batches of 2 (one image or two) warm
    batch_size: int | None = None  # None: the blog's 6, or the largest below it that fits in memory
    eval_samples: int | None = None  # default: 6 on CPU, 128 on CUDA
    eval_max_new_tokens: int = 16
    loader_batches: int = 2
    peak_tflops: float | None = None
    config: Path | None = None
    work_dir: Path = Path(".cache/benchmark")
    document_size: tuple[int, int] = (1240, 1754)  # A4 at 150 dpi; DocVQA scans are ~1700 x 2200 px
    ablate: list[str] = field(default_factory=list)
    seed: int = 42

    def __post_init__(self) -> None:
        if self.model_size not in MODEL_SIZES:
            raise RecipeError(f"--model-size {self.model_size!r} is not one of: {', '.join(MODEL_SIZES)}")
        if self.mode not in TRAINING_MODES:
            raise RecipeError(f"--mode {self.mode!r} is not one of: {', '.join(TRAINING_MODES)}")
        for name in ("steps", "batch_size", "eval_max_new_tokens", "loader_batches"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise RecipeError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.warmup_steps < 1:
            raise RecipeError("--warmup-steps must be at least 1: the first step pays one-off costs")
        unknown = sorted(set(self.ablate) - set(ABLATIONS))
        if unknown:
            raise RecipeError(f"--ablate {', '.join(unknown)}: valid: {', '.join(ABLATIONS)}")

    def recipe_config(self) -> Path:
        if self.config is not None:
            if not self.config.is_file():
                raise RecipeError(f"--config {self.config}: file not found")
            return self.config
        sized = RECIPES_DIR / f"{self.model_size}_{self.mode}.yaml"
        return sized if sized.is_file() else RECIPES_DIR / f"base_{self.mode}.yaml"


def parse_yaml_value(config: Path, key: str, default: Any) -> Any:
    return (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get(key, default)


def path_result(
    step_seconds: list[float],
    step_flops: list[int],
    batch_size: int,
    tokens_per_sample: float,
    peak_tflops: float,
    peak_memory_bytes: int,
    loader_samples_per_s: float,
    eval_samples_per_s: float | None,
    **extra: Any,
) -> dict[str, Any]:
    seconds_per_step = sum(step_seconds) / len(step_seconds)
    samples_per_s = batch_size / seconds_per_step
    return {
        "train_samples_per_s": samples_per_s,
        "train_tokens_per_s": samples_per_s * tokens_per_sample,
        "step_seconds": step_seconds,
        "step_flops": step_flops,
        "flops_per_step": sum(step_flops) / len(step_flops),
        "mfu": sum(step_flops) / sum(step_seconds) / (peak_tflops * 1e12),
        "peak_memory_bytes": peak_memory_bytes,
        "loader_samples_per_s": loader_samples_per_s,
        "eval_samples_per_s": eval_samples_per_s,
        **extra,
    }


@dataclass
class BenchmarkData:
    model_dir: Path
    data_dir: Path
    train_rows: Dataset
    eval_rows: Dataset
    tokens_per_sample: float


def prepare_data(settings: BenchmarkSettings, eval_samples: int) -> BenchmarkData:
    """The random model and enough synthetic documents for warm-up + timed steps (+ loader batches)."""
    work_dir = settings.work_dir
    model_dir = build_random_florence2(
        work_dir / f"{settings.model_size}-florence2", size=settings.model_size
    )
    train_batches = settings.warmup_steps + settings.steps + settings.loader_batches
    num_train_docs = math.ceil(
        train_batches * (settings.batch_size or BLOG_BATCH_SIZE) / QUESTIONS_PER_DOCUMENT
    )
    num_eval_docs = math.ceil(eval_samples / QUESTIONS_PER_DOCUMENT)
    width, height = settings.document_size
    data_dir = write_synthetic_docvqa(
        work_dir / f"docvqa-{num_train_docs}-{num_eval_docs}-{width}x{height}",
        num_train_docs=num_train_docs,
        num_validation_docs=num_eval_docs,
        num_test_docs=0,
        questions_per_doc=QUESTIONS_PER_DOCUMENT,
        image_size=settings.document_size,
    )
    task = get_task("docvqa")
    train_rows = load_task_split(task, str(data_dir), "train")
    eval_rows = load_task_split(task, str(data_dir), "validation", max_samples=eval_samples)
    processor = load_processor(ModelArguments(model_name_or_path=str(model_dir)))
    # Real (non-padding) tokens per sample: image tokens, <s> prompt </s> into the encoder, <s> answer </s> out.
    prompts = processor(text=column_values(train_rows, "prompt"))["input_ids"]
    targets = processor.tokenizer(column_values(train_rows, "target"))["input_ids"]
    tokens = [processor.num_image_tokens + 2 + len(p) + len(t) for p, t in zip(prompts, targets, strict=True)]
    return BenchmarkData(model_dir, data_dir, train_rows, eval_rows, sum(tokens) / len(tokens))


def run_blog_loop(
    settings: BenchmarkSettings,
    data: BenchmarkData,
    device: torch.device,
    peak_tflops: float,
    eval_beams: tuple[int, ...] = (BLOG_NUM_BEAMS,),
) -> dict[str, Any]:
    """The blog loop's training, then its one-example-at-a-time generation at each of `eval_beams` (none: no
    evaluation); `eval_samples_per_s` is the first entry's."""
    set_seed(settings.seed)
    model_args = ModelArguments(model_name_or_path=str(data.model_dir), training_mode=settings.mode)
    processor = load_processor(model_args)
    loader_rate = loader_samples_per_s(
        iter(blog_dataloader(data.train_rows, processor, device, settings.batch_size)),
        min(settings.loader_batches, len(data.train_rows) // settings.batch_size - 1),
        settings.batch_size,
    )
    with PeakMemory(device) as memory:
        model = AutoModelForImageTextToText.from_pretrained(data.model_dir).to(device)  # fp32, as the blog
        model = apply_training_mode(model, model_args)
        model.train()
        total_steps = settings.warmup_steps + settings.steps
        optimizer, scheduler = blog_optimizer(model, num_training_steps=total_steps)
        batches = iter(blog_dataloader(data.train_rows, processor, device, settings.batch_size))
        step_seconds, timed_batches = [], []
        for step in range(total_steps):
            start = time.perf_counter()
            inputs, answers = next(batches)  # the blog's collate_fn runs here, in the training loop
            labels = blog_labels(processor, answers, device)
            blog_train_step(model, optimizer, scheduler, inputs, labels)
            synchronize(device)
            if step >= settings.warmup_steps:
                step_seconds.append(time.perf_counter() - start)
                timed_batches.append((inputs, labels))
    del optimizer, scheduler

    step_flops = count_step_flops(timed_batches, functools.partial(_blog_forward_backward, model))
    del timed_batches

    eval_rates = blog_eval_rates(
        model, processor, data.eval_rows, device, settings.eval_max_new_tokens, eval_beams
    )
    del model
    return path_result(
        step_seconds,
        step_flops,
        settings.batch_size,
        data.tokens_per_sample,
        peak_tflops,
        memory.peak_bytes,
        loader_rate,
        eval_rates[eval_beams[0]] if eval_beams else None,
        precision="fp32",
        eval_generation=f"one example at a time, {'/'.join(map(str, eval_beams))} beam(s)",
        eval_samples_per_s_by_beams=eval_rates,
        first_step_seconds=0.0,
    )


def _blog_forward_backward(model: torch.nn.Module, batch: tuple[Any, torch.Tensor]) -> None:
    blog_loss(model, *batch).backward()
    model.zero_grad(set_to_none=True)


def blog_eval_rates(
    model: torch.nn.Module,
    processor: Any,
    rows: Dataset,
    device: torch.device,
    max_new_tokens: int,
    eval_beams: tuple[int, ...],
) -> dict[int, float]:
    """Samples/s of the blog's demo generation, one example at a time, at each number of beams."""
    model.eval()
    rates = {}
    for num_beams in eval_beams:
        start = time.perf_counter()
        for row in rows:
            blog_generate(
                model, processor, row["prompt"], row["image"], device, max_new_tokens, num_beams=num_beams
            )
        synchronize(device)
        rates[num_beams] = len(rows) / (time.perf_counter() - start)
    return rates
