"""Training / evaluation speed of our DocVQA recipe path against the blog post's loop, side by side.

One process, one device, the same random-initialised Florence-2 (speed does not depend on weight values) and
the same synthetic DocVQA rows (about 3 questions per document, like DocVQA) for both paths:

* **blog loop** (JSON key `seed`): `florence_recipes.blog_loop`, the blog's loop re-implemented (fp32, processor in the main
  process, batch 6, per-example `generate(num_beams=3)`).
* **ours**: `FlorenceTrainer` with the recipe YAML of the mode (`recipes/docvqa/<size>_<mode>.yaml`, else
  `base_<mode>.yaml`) — its precision, attention, optimizer, DataLoader workers and speed switches — with only
  the model, data, batch size, step count and generation length overridden to match the blog loop.

Per path: training samples/s and tokens/s (after `warmup_steps` untimed steps), FLOPs of one training step
counted with `torch.utils.flop_counter.FlopCounterMode` for its exact batch shapes, MFU against the device's
peak, peak memory, the training DataLoader's own samples/s, and evaluation samples/s with generation.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import math
import os
import platform
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
import torch
from datasets import Dataset
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count
from transformers import AutoModelForImageTextToText, PrinterCallback, TrainerCallback, set_seed

from florence_recipes.blog_loop import (
    BLOG_BATCH_SIZE,
    BLOG_NUM_BEAMS,
    blog_dataloader,
    blog_generate,
    blog_optimizer,
    blog_train_step,
)
from florence_recipes.builders import build_random_florence2, write_synthetic_docvqa
from florence_recipes.configs import TRAINING_MODES, ModelArguments, parse_recipe_args
from florence_recipes.data import column_values, data_sources, load_task_split
from florence_recipes.errors import RecipeError
from florence_recipes.modeling import apply_training_mode, load_model, load_processor, set_generation_length
from florence_recipes.tasks import get_task
from florence_recipes.trainer import FlorenceTrainer

MODEL_SIZES = ("tiny", "base", "large")
RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes" / "docvqa"
# Dense bf16 tensor-core peaks from the datasheets, by substring of `torch.cuda.get_device_name()`;
# the first match wins, so the more specific names come first.
CUDA_PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "A100": 312.0}


def _cpu_sdpa_flops(
    query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any
) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward_flops(
    grad_out: Any, query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any
) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


# FlopCounterMode knows the CUDA attention kernels only; the CPU one has the same shapes and FLOPs.
_CPU_SDPA_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops,
}
QUESTIONS_PER_DOCUMENT = 3  # DocVQA: ~39.5k questions over ~12k images
# Switch one optimisation of our path off per variant (`--ablate`): recipe keys and the values that disable it.
ABLATIONS: dict[str, dict[str, Any]] = {
    "feature_cache": {"feature_cache": "none"},
    "dedup": {"dedup_vision": False, "group_by_image": False},
    "bf16": {"bf16": False},
    "workers": {"dataloader_num_workers": 0},
    "fused_adamw": {"optim": "adamw_torch"},
}


@dataclass
class BenchmarkSettings:
    model_size: str
    mode: str
    steps: int
    warmup_steps: int = 1
    batch_size: int = BLOG_BATCH_SIZE
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
            if getattr(self, name) < 1:
                raise RecipeError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.warmup_steps < 1:
            raise RecipeError("--warmup-steps must be at least 1: FLOPs are counted on the first step")
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


# --- measurement helpers ----------------------------------------------------------------------------------


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}, torch {torch.__version__})"
    cpuinfo = Path("/proc/cpuinfo")
    names = (
        [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        if cpuinfo.is_file()
        else []
    )
    name = names[0] if names else platform.processor() or platform.machine()
    return f"{name} CPU, {os.cpu_count()} cores (torch {torch.__version__})"


def measure_matmul_tflops(device: torch.device, dtype: torch.dtype, size: int = 2048) -> float:
    """Best dense matmul throughput of `device` in `dtype` over a few repetitions, in TFLOP/s."""
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    best = 0.0
    for _ in range(6):
        _synchronize(device)
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        _synchronize(device)
        best = max(best, 4 * 2 * size**3 / (time.perf_counter() - start) / 1e12)
    return best


def resolve_peak_tflops(device: torch.device, given: float | None) -> tuple[float, str]:
    """The per-device peak that MFU divides by, and where it comes from."""
    if given is not None:
        return given, "--peak-tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in CUDA_PEAK_TFLOPS.items():
            if key in name:
                return peak, f"datasheet dense bf16 peak of {key}"
        raise RecipeError(f"no known bf16 peak for {name}: pass --peak-tflops <datasheet dense bf16 TFLOP/s>")
    # A shared virtual CPU has no trustworthy datasheet peak (core count, clocks and AMX availability vary):
    # use the best dense matmul throughput this process reaches, in bf16 where the CPU supports it.
    dtype = torch.bfloat16 if torch.backends.mkldnn.is_available() and _cpu_has_bf16() else torch.float32
    dtype_name = str(dtype).removeprefix("torch.")
    return measure_matmul_tflops(device, dtype), f"measured {dtype_name} matmul peak of this CPU"


def _cpu_has_bf16() -> bool:
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


class PeakMemory:
    """Peak memory of a block: CUDA `max_memory_allocated`; CPU peak resident set size of the process,
    sampled every 10 ms (process-wide, so it includes the Python runtime and libraries)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        process = psutil.Process()
        while not self._stop.wait(0.01):
            self.peak_bytes = max(self.peak_bytes, process.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()


@contextlib.contextmanager
def count_flops() -> Iterator[FlopCounterMode]:
    with FlopCounterMode(display=False, custom_mapping=_CPU_SDPA_FLOPS) as counter:
        yield counter


class StepTimer(TrainerCallback):
    """Counts the FLOPs of the Trainer's first step and times every step after `warmup_steps`."""

    def __init__(self, device: torch.device, warmup_steps: int) -> None:
        self.device = device
        self.warmup_steps = warmup_steps
        self.flops = 0
        self.step_seconds: list[float] = []
        self._counter: contextlib.ExitStack | None = None
        self._flop_counter: FlopCounterMode | None = None
        self._last = 0.0

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == 0:
            self._counter = contextlib.ExitStack()
            self._flop_counter = self._counter.enter_context(count_flops())

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        _synchronize(self.device)
        now = time.perf_counter()
        if self._counter is not None:
            self._counter.close()
            self._counter = None
            self.flops = self._flop_counter.get_total_flops()
        if state.global_step > self.warmup_steps:
            self.step_seconds.append(now - self._last)
        self._last = now


def _path_result(
    step_seconds: list[float],
    flops: int,
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
        "flops_per_step": flops,
        "mfu": flops / seconds_per_step / (peak_tflops * 1e12),
        "peak_memory_bytes": peak_memory_bytes,
        "loader_samples_per_s": loader_samples_per_s,
        "eval_samples_per_s": eval_samples_per_s,
        **extra,
    }


def _loader_samples_per_s(batches: Iterator[Any], num_batches: int, batch_size: int) -> float:
    """Samples/s of a DataLoader alone, from its first batch on (worker start-up excluded)."""
    next(batches)
    start = time.perf_counter()
    for _ in range(num_batches):
        next(batches)
    return num_batches * batch_size / (time.perf_counter() - start)


# --- the two paths ------------------------------------------------------------------------------------------


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
    num_train_docs = math.ceil(train_batches * settings.batch_size / QUESTIONS_PER_DOCUMENT)
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
    settings: BenchmarkSettings, data: BenchmarkData, device: torch.device, peak_tflops: float
) -> dict[str, Any]:
    set_seed(settings.seed)
    model_args = ModelArguments(model_name_or_path=str(data.model_dir), training_mode=settings.mode)
    processor = load_processor(model_args)
    loader_rate = _loader_samples_per_s(
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
        step_seconds, flops = [], 0
        for step in range(total_steps):
            start = time.perf_counter()
            with count_flops() if step == 0 else contextlib.nullcontext() as counter:
                inputs, answers = next(batches)  # the blog's collate_fn runs here, in the training loop
                blog_train_step(model, processor, optimizer, scheduler, inputs, answers, device)
            _synchronize(device)
            if step == 0:
                flops = counter.get_total_flops()
            if step >= settings.warmup_steps:
                step_seconds.append(time.perf_counter() - start)
    del optimizer, scheduler

    model.eval()
    start = time.perf_counter()
    for row in data.eval_rows:
        blog_generate(model, processor, row["prompt"], row["image"], device, settings.eval_max_new_tokens)
    _synchronize(device)
    eval_rate = len(data.eval_rows) / (time.perf_counter() - start)
    del model
    return _path_result(
        step_seconds,
        flops,
        settings.batch_size,
        data.tokens_per_sample,
        peak_tflops,
        memory.peak_bytes,
        loader_rate,
        eval_rate,
        precision="fp32",
        eval_generation=f"one example at a time, {BLOG_NUM_BEAMS} beams",
    )


def _ours_overrides(
    settings: BenchmarkSettings,
    data: BenchmarkData,
    device: torch.device,
    output_dir: Path,
    changes: dict[str, Any],
) -> list[str]:
    values: dict[str, Any] = {
        "model_name_or_path": data.model_dir,
        "dataset_name": data.data_dir,
        "output_dir": output_dir,
        "max_steps": settings.warmup_steps + settings.steps,
        "per_device_train_batch_size": settings.batch_size,
        "gradient_accumulation_steps": 1,
        "generation_max_length": settings.eval_max_new_tokens + 1,  # + the decoder start token
        "do_train": True,
        "do_eval": True,
        "eval_strategy": "no",
        "save_strategy": "no",
        "load_best_model_at_end": False,
        "logging_strategy": "no",
        "report_to": "none",
        "push_to_hub": False,
        "disable_tqdm": True,
        "feature_cache_dir": output_dir / "feature_cache",
        "use_cpu": device.type == "cpu",  # lets the YAML's bf16 run as CPU autocast
        "seed": settings.seed,
        **changes,
    }
    return [item for key, value in values.items() for item in (f"--{key}", str(value))]


def run_ours(
    settings: BenchmarkSettings,
    data: BenchmarkData,
    device: torch.device,
    peak_tflops: float,
    output_dir: Path,
    changes: dict[str, Any] | None = None,
    evaluate: bool = True,
) -> dict[str, Any]:
    """Our recipe path: the mode's YAML with `changes` on top (an ablation switches one optimisation off)."""
    config = settings.recipe_config()
    model_args, data_args, training_args = parse_recipe_args(
        ["--config", str(config), *_ours_overrides(settings, data, device, output_dir, changes or {})]
    )
    if model_args.training_mode != settings.mode:
        raise RecipeError(
            f"{config} trains training_mode={model_args.training_mode}, not --mode {settings.mode}"
        )
    # More workers than cores only adds contention (a 2-core CI machine vs the YAML's 8 for a GPU server).
    training_args.dataloader_num_workers = min(training_args.dataloader_num_workers, os.cpu_count() or 1)
    if training_args.dataloader_num_workers == 0:
        training_args.dataloader_persistent_workers = False
    # A cache left by an earlier benchmark run would be reused; time its build instead.
    shutil.rmtree(output_dir / "feature_cache", ignore_errors=True)
    set_seed(settings.seed)
    sources = data_sources(data_args, training_args)
    processor = load_processor(model_args)
    with PeakMemory(device) as memory:
        model = load_model(model_args)
        set_generation_length(model, training_args.generation_max_length)
        model = apply_training_mode(model, model_args)
        timer = StepTimer(device, settings.warmup_steps)
        trainer = FlorenceTrainer(
            model=model,
            args=training_args,
            processor=processor,
            sources=sources,
            train_dataset=data.train_rows,
            eval_dataset=data.eval_rows,
            max_target_length=data_args.max_target_length,
            training_mode=model_args.training_mode,
            callbacks=[timer],
        )
        trainer.remove_callback(PrinterCallback)  # the table reports the numbers
        cache: dict[str, Any] = {}
        if training_args.feature_cache != "none":
            start = time.perf_counter()
            num_images = len(trainer.prepare_feature_cache().rows)
            cache = {"cache_images": num_images, "cache_build_seconds": time.perf_counter() - start}
        loader_rate = _loader_samples_per_s(
            iter(trainer.get_train_dataloader()),
            min(settings.loader_batches, len(data.train_rows) // settings.batch_size - 1),
            settings.batch_size,
        )
        trainer.train()
    eval_rate = None
    if evaluate:
        # Start the persistent eval workers first: in a real run they start once, not at every evaluation.
        next(iter(trainer.get_eval_dataloader()))
        start = time.perf_counter()
        trainer.evaluate()
        _synchronize(device)
        eval_rate = len(data.eval_rows) / (time.perf_counter() - start)
    precision = "bf16 autocast" if training_args.bf16 else "fp16 autocast" if training_args.fp16 else "fp32"
    settings_used = {
        key: getattr(training_args, key)
        for key in (
            "bf16",
            "group_by_image",
            "dedup_vision",
            "feature_cache",
            "dataloader_num_workers",
            "optim",
        )
    }
    del trainer, model
    return _path_result(
        timer.step_seconds,
        timer.flops,
        settings.batch_size,
        data.tokens_per_sample,
        peak_tflops,
        memory.peak_bytes,
        loader_rate,
        eval_rate,
        precision=f"{precision}, {model_args.attn_implementation}, weights {model_args.torch_dtype}",
        eval_generation=(
            f"batches of {training_args.per_device_eval_batch_size}, {training_args.generation_num_beams or 1} "
            f"beam(s){', grouped by prompt length' if training_args.group_eval_by_length else ''}"
            f"{', each image encoded once' if training_args.dedup_vision else ''}"
        ),
        config=str(config),
        settings=settings_used,
        **cache,
    )


def _release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_benchmark(settings: BenchmarkSettings, command: str = "") -> dict[str, Any]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    eval_samples = settings.eval_samples or (128 if device.type == "cuda" else 6)
    peak_tflops, peak_source = resolve_peak_tflops(device, settings.peak_tflops)
    data = prepare_data(settings, eval_samples)
    output_dir = settings.work_dir / "runs" / f"{settings.model_size}-{settings.mode}"
    # Ours first: its peak memory is then not inflated by memory the blog loop freed but the allocator kept.
    ours = run_ours(settings, data, device, peak_tflops, output_dir)
    _release_memory(device)
    blog = run_blog_loop(settings, data, device, peak_tflops)
    _release_memory(device)
    ablations = {}
    for name in settings.ablate:
        if all(ours["settings"][key] == value for key, value in ABLATIONS[name].items()):
            continue  # already off in our path for this mode: nothing to compare
        variant = run_ours(
            settings,
            data,
            device,
            peak_tflops,
            output_dir / f"without-{name}",
            ABLATIONS[name],
            evaluate=False,
        )
        ablations[name] = {
            "changes": ABLATIONS[name],
            "train_samples_per_s": variant["train_samples_per_s"],
            "ours_speedup": ours["train_samples_per_s"] / variant["train_samples_per_s"],
        }
        _release_memory(device)
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
        "train_ratio": ours["train_samples_per_s"] / blog["train_samples_per_s"],
        "eval_ratio": ours["eval_samples_per_s"] / blog["eval_samples_per_s"],
        "loader_ratio": ours["loader_samples_per_s"] / blog["loader_samples_per_s"],
        "ablations": ablations,
    }


# --- report ---------------------------------------------------------------------------------------------


def _ratio(ours: float | None, blog: float | None) -> str:
    return f"{ours / blog:.2f}x" if ours and blog else "-"


def format_table(result: dict[str, Any]) -> str:
    """The benchmark as markdown: a header naming device, date and command, then ours vs the blog loop."""
    ours, blog, settings = result["ours"], result["seed"], result["settings"]
    gib = 1024**3

    def row(name: str, blog_value: str, ours_value: str, ratio: str = "-") -> str:
        return f"| {name} | {blog_value} | {ours_value} | {ratio} |"

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
        row("precision", blog["precision"], ours["precision"]),
    ]

    def measured(name: str, key: str, fmt: str, scale: float = 1.0) -> str:
        return row(
            name,
            format(blog[key] / scale, fmt),
            format(ours[key] / scale, fmt),
            _ratio(ours[key], blog[key]),
        )

    lines += [
        measured("train samples/s", "train_samples_per_s", ".3g"),
        measured("train tokens/s", "train_tokens_per_s", ".4g"),
        measured("TFLOP per step (counted)", "flops_per_step", ".3g", 1e12),
        row("MFU", f"{blog['mfu']:.1%}", f"{ours['mfu']:.1%}"),
        measured("peak memory (GiB)", "peak_memory_bytes", ".2f", gib),
        measured("data loader samples/s", "loader_samples_per_s", ".3g"),
        measured("eval samples/s", "eval_samples_per_s", ".3g"),
        row("eval generation", blog["eval_generation"], ours["eval_generation"]),
    ]
    if "cache_build_seconds" in ours:
        rate = ours["cache_images"] / ours["cache_build_seconds"]
        lines.append(row("feature cache build", "-", f"{ours['cache_images']} images, {rate:.3g} images/s"))
    for name, ablation in result["ablations"].items():
        changes = ", ".join(f"{k}={v}" for k, v in ablation["changes"].items())
        lines.append(
            row(
                f"ours without {name} ({changes}): train samples/s",
                "-",
                f"{ablation['train_samples_per_s']:.3g}",
                f"ours / variant: {ablation['ours_speedup']:.2f}x",
            )
        )
    return "\n".join(lines)
