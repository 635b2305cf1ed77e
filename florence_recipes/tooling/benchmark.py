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

import contextlib
import dataclasses
import datetime
import functools
import gc
import math
import multiprocessing
import os
import platform
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
import torch
import yaml
from datasets import Dataset
from torch.utils.flop_counter import (
    FlopCounterMode,
    conv_backward_flop,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)
from transformers import AutoModelForImageTextToText, PrinterCallback, TrainerCallback, set_seed

from florence_recipes.builders.datasets import write_synthetic_docvqa
from florence_recipes.builders.model import build_random_florence2
from florence_recipes.configs.choices import TRAINING_MODES
from florence_recipes.configs.model import ModelArguments
from florence_recipes.configs.parser import parse_recipe_args
from florence_recipes.configs.training import cpu_bf16_wanted, cpu_has_native_bf16
from florence_recipes.data.loading import column_values, load_task_split
from florence_recipes.data.sources import data_sources
from florence_recipes.data.tasks import get_task
from florence_recipes.errors import RecipeError
from florence_recipes.models.loading import (
    apply_training_mode,
    load_model,
    load_processor,
    set_generation_length,
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
from florence_recipes.training.trainer import FlorenceTrainer

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


def _conv_backward_flops(
    grad_out_shape: Any,
    x_shape: Any,
    w_shape: Any,
    bias: Any,
    stride: Any,
    padding: Any,
    dilation: Any,
    transposed: bool,
    output_padding: Any,
    groups: int,
    output_mask: list[bool],
    out_shape: Any = None,
    **kwargs: Any,
) -> int:
    """torch's count for `convolution_backward`, with the weight gradient of a grouped convolution divided by
    `groups`: torch counts it as a dense one, `groups` times the real work (128-1024x for DaViT's depthwise
    position convolutions, a third of base full fine-tuning's counted FLOPs). The input gradient is right."""
    args = (
        grad_out_shape,
        x_shape,
        w_shape,
        bias,
        stride,
        padding,
        dilation,
        transposed,
        output_padding,
        groups,
    )
    grad_input = conv_backward_flop(*args, [output_mask[0], False], out_val=out_shape)
    grad_weight = conv_backward_flop(*args, [False, output_mask[1]], out_val=out_shape)
    return grad_input + grad_weight // groups


# Corrections to FlopCounterMode's formulas: it knows the CUDA attention kernels only (the CPU one has the same
# shapes and FLOPs), and it over-counts the backward of grouped convolutions.
_FLOP_FORMULAS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops,
    torch.ops.aten.convolution_backward: _conv_backward_flops,
}
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
    dtype = (
        torch.bfloat16 if torch.backends.mkldnn.is_available() and cpu_has_native_bf16() else torch.float32
    )
    dtype_name = str(dtype).removeprefix("torch.")
    return measure_matmul_tflops(device, dtype), f"measured {dtype_name} matmul peak of this CPU"


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
    with FlopCounterMode(display=False, custom_mapping=_FLOP_FORMULAS) as counter:
        yield counter


class StepTimer(TrainerCallback):
    """Times every Trainer step after `warmup_steps` (FLOPs are counted afterwards: `count_step_flops`)."""

    def __init__(self, device: torch.device, warmup_steps: int) -> None:
        self.device = device
        self.warmup_steps = warmup_steps
        self.step_seconds: list[float] = []
        self.first_step_seconds = 0.0  # includes one-off work: torch.compile, cuDNN autotuning, worker start
        self._last = 0.0

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == 0:
            _synchronize(self.device)
            self._last = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        _synchronize(self.device)
        now = time.perf_counter()
        if state.global_step == 1:
            self.first_step_seconds = now - self._last
        if state.global_step > self.warmup_steps:
            self.step_seconds.append(now - self._last)
        self._last = now


def _shape_signature(value: Any) -> Any:
    """What the FLOPs of a step depend on: the shapes of its batch's tensors (and any other values)."""
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, Mapping):
        return tuple((key, _shape_signature(item)) for key, item in sorted(value.items()))
    if isinstance(value, list | tuple):
        return tuple(_shape_signature(item) for item in value)
    return value


def count_step_flops(batches: list[Any], forward_backward: Callable[[Any], None]) -> list[int]:
    """FLOPs of each step, counted after the timing by replaying its batch's forward and backward under the
    counter: inside a timed step, the counter's Python hook on every op would slow it (on a GPU, by more than
    the step takes). Steps differ (`group_by_image` batches hold one image or two), so every timed step is
    counted; batches of the same shapes have the same FLOPs and are replayed once."""
    counted: dict[Any, int] = {}
    for batch in batches:
        signature = _shape_signature(batch)
        if signature not in counted:
            with count_flops() as counter:
                forward_backward(batch)
            counted[signature] = counter.get_total_flops()
    return [counted[_shape_signature(batch)] for batch in batches]


class BatchRecordingTrainer(FlorenceTrainer):
    """`FlorenceTrainer` that keeps each training step's batch, so its FLOPs can be counted after the timing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.step_batches: list[dict[str, Any]] = []

    def training_step(self, model: torch.nn.Module, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        self.step_batches.append(dict(inputs))  # a copy: the step pops the image keys from `inputs`
        return super().training_step(model, inputs, *args, **kwargs)

    def replay_step(self, batch: dict[str, Any]) -> None:
        """The same step's forward and backward again, its gradients dropped."""
        super().training_step(self.model_wrapped, dict(batch))
        self.model.zero_grad(set_to_none=True)


def _path_result(
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


def _loader_samples_per_s(batches: Iterator[Any], num_batches: int, batch_size: int) -> float:
    """Samples/s of a DataLoader alone, from its first batch on (worker start-up excluded)."""
    next(batches)
    start = time.perf_counter()
    for _ in range(num_batches):
        next(batches)
    return num_batches * batch_size / (time.perf_counter() - start)


# --- memory: estimated before anything large is loaded ---------------------------------------------------

GIB = 1024**3
# On top of the tensors a forward saves for backward: backward's transient activation gradients, the
# allocator's fragmentation and (CPU) the DataLoader's batches. Measured: base full at batch 2 on CPU peaked at
# ~1.9x its saved activations (14.8 GiB RSS vs 2.8 GiB saved per sample + 2.9 GiB states + ~1.2 GiB process).
ACTIVATION_HEADROOM = 2.0
# Fraction of the memory free now that a run may plan to use: the rest absorbs what the estimate leaves out
# (CUDA context and workspaces, the Python heap growing, memory the first path freed but the allocator kept).
USABLE_FRACTION = 0.9


@dataclass
class MemoryEstimate:
    """Memory one training path needs: a fixed part plus a part per sample of the batch."""

    fixed_bytes: int  # weights, gradients, optimizer states, autocast's low-precision weight copies
    per_sample_bytes: int  # activations kept for backward, per sample, with ACTIVATION_HEADROOM

    def at(self, batch_size: int) -> int:
        return self.fixed_bytes + batch_size * self.per_sample_bytes

    def largest_batch(self, available_bytes: int) -> int:
        return max(0, (int(available_bytes * USABLE_FRACTION) - self.fixed_bytes) // self.per_sample_bytes)


def available_memory(device: torch.device) -> int:
    """Bytes this process may still allocate on `device`: free GPU memory, or available system RAM."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return psutil.virtual_memory().available


def saved_activation_bytes(
    model: torch.nn.Module, inputs: dict[str, torch.Tensor], autocast: contextlib.AbstractContextManager
) -> int:
    """Bytes of the tensors one forward keeps for backward (each storage counted once)."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    parameters = {param.untyped_storage().data_ptr() for param in model.parameters()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), autocast:
        model(**inputs)
    return sum(size for pointer, size in storages.items() if pointer not in parameters)


def estimate_training_memory(
    data: BenchmarkData, mode: str, device: torch.device, config: Path
) -> dict[str, MemoryEstimate]:
    """Memory of a training step of each path, from one batch-1 forward of the model on `device`.

    Blog loop: fp32 weights, gradients and per-parameter AdamW states (16 bytes per trainable parameter).
    Ours: the YAML's weight dtype, the same gradients and fp32 AdamW states, plus autocast's bf16 weight copies.
    Both keep the activations of an fp32 forward (an upper bound for ours, which saves some in bf16 and, with
    `dedup_vision` or the feature cache, runs the vision tower less).
    """
    recipe = yaml.safe_load(config.read_text(encoding="utf-8"))
    model_args = ModelArguments(model_name_or_path=str(data.model_dir), training_mode=mode)
    processor = load_processor(model_args)
    row = data.train_rows[0]
    inputs = processor(text=[row["prompt"]], images=[row["image"]], return_tensors="pt")
    labels = processor.tokenizer([row["target"]], return_tensors="pt")["input_ids"]
    model = apply_training_mode(load_model(model_args), model_args).to(device)
    model.train()
    batch = {"input_ids": inputs["input_ids"], "pixel_values": inputs["pixel_values"], "labels": labels}
    activations = saved_activation_bytes(
        model, {key: value.to(device) for key, value in batch.items()}, contextlib.nullcontext()
    )
    parameters = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    del model
    _release_memory(device)
    per_sample = math.ceil(activations * ACTIVATION_HEADROOM)
    weight_bytes = torch.empty((), dtype=getattr(torch, recipe.get("torch_dtype", "float32"))).element_size()
    ours_fixed = parameters * weight_bytes + trainable * (weight_bytes + 8)
    if recipe.get("fp16") or (recipe.get("bf16") and (device.type != "cpu" or cpu_bf16_wanted("auto"))):
        ours_fixed += parameters * 2  # autocast's per-forward low-precision copies of the weights
    return {
        "seed": MemoryEstimate(parameters * 4 + trainable * 12, per_sample),
        "ours": MemoryEstimate(ours_fixed, per_sample),
    }


def resolve_batch_size(
    requested: int | None, estimates: dict[str, MemoryEstimate], available_bytes: int, device: torch.device
) -> int:
    """The requested batch if both paths fit in memory, else a one-line error naming one that does; no
    request: the blog's batch, or the largest below it that fits."""
    fits = min(estimate.largest_batch(available_bytes) for estimate in estimates.values())
    batch = requested or min(BLOG_BATCH_SIZE, fits)
    if fits < 1 or batch > fits:
        path = max(estimates, key=lambda name: estimates[name].at(max(batch, 1)))
        needed = estimates[path].at(max(batch, 1)) / GIB
        advice = f"--batch-size {fits} fits" if fits >= 1 else "no batch fits: use a smaller --model-size"
        raise RecipeError(
            f"--batch-size {max(batch, 1)}: the {'blog loop' if path == 'seed' else 'recipe path'} needs about "
            f"{needed:.1f} GiB but {available_bytes / GIB:.1f} GiB are free on this {device.type} "
            f"(planning with {USABLE_FRACTION:.0%} of it); {advice}"
        )
    return batch


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
        step_seconds, timed_batches = [], []
        for step in range(total_steps):
            start = time.perf_counter()
            inputs, answers = next(batches)  # the blog's collate_fn runs here, in the training loop
            labels = blog_labels(processor, answers, device)
            blog_train_step(model, optimizer, scheduler, inputs, labels)
            _synchronize(device)
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
    return _path_result(
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
        _synchronize(device)
        rates[num_beams] = len(rows) / (time.perf_counter() - start)
    return rates


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
    eval_beams: tuple[int, ...] = (BLOG_NUM_BEAMS,),
) -> dict[str, Any]:
    """Our recipe path: the mode's YAML with `changes` on top (an ablation switches one optimisation off).

    Evaluation generates at each of `eval_beams` (none: no evaluation); `eval_samples_per_s` is the first
    entry's, by default the blog's 3 beams so that the eval ratio compares equal work."""
    config = settings.recipe_config()
    model_args, data_args, training_args = parse_recipe_args(
        ["--config", str(config), *_ours_overrides(settings, data, device, output_dir, changes or {})]
    )
    yaml_batch_size = parse_yaml_value(config, "per_device_train_batch_size", None)
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
        trainer = BatchRecordingTrainer(
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
    step_flops = count_step_flops(trainer.step_batches[settings.warmup_steps :], trainer.replay_step)
    trainer.step_batches.clear()
    eval_rates = {}
    if eval_beams:
        # Start the persistent eval workers first: in a real run they start once, not at every evaluation.
        next(iter(trainer.get_eval_dataloader()))
    for num_beams in eval_beams:
        start = time.perf_counter()
        trainer.evaluate(num_beams=num_beams)
        _synchronize(device)
        eval_rates[num_beams] = len(data.eval_rows) / (time.perf_counter() - start)
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
            "cpu_bf16",
        )
    }
    del trainer, model
    return _path_result(
        timer.step_seconds,
        step_flops,
        settings.batch_size,
        data.tokens_per_sample,
        peak_tflops,
        memory.peak_bytes,
        loader_rate,
        eval_rates[eval_beams[0]] if eval_beams else None,
        precision=f"{precision}, {model_args.attn_implementation}, weights {model_args.torch_dtype}",
        eval_generation=(
            f"batches of {training_args.per_device_eval_batch_size}, {'/'.join(map(str, eval_beams))} "
            f"beam(s){', grouped by prompt length' if training_args.group_eval_by_length else ''}"
            f"{', each image encoded once' if training_args.dedup_vision else ''}"
        ),
        config=str(config),
        settings=settings_used,
        eval_samples_per_s_by_beams=eval_rates,
        first_step_seconds=timer.first_step_seconds,
        num_train_epochs=training_args.num_train_epochs,
        yaml_batch_size=yaml_batch_size,
        **cache,
    )


def _release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_in_fresh_process(what: str, function: Callable[..., Any], *args: Any) -> Any:
    """`function(*args)` in a process forked for it, which ends with it. Memory one path freed but its allocator
    kept (glibc and CUDA both keep it) then cannot push a later path over the machine's memory, and a path's CPU
    peak memory is its own. A process killed on the way (by the kernel, for memory) becomes one line naming
    `what`; an exception inside it arrives here as itself.

    The caller must not have computed anything itself: a CUDA context or an OpenMP thread pool does not survive
    a fork (hence forked, not spawned: a spawned process would spend ~13 s re-importing the libraries)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork")) as pool:
        try:
            return pool.submit(function, *args).result()
        except BrokenProcessPool as err:
            raise RecipeError(
                f"{what}: its process was killed, most likely for memory (the estimate before loading did not "
                "cover it); pass a smaller --batch-size"
            ) from err


def _memory_estimates(
    settings: BenchmarkSettings, device: torch.device
) -> tuple[dict[str, MemoryEstimate], int]:
    """Each path's estimate and the memory available before anything loads. The estimate needs the model and
    one document, not the data of a batch that may not fit."""
    available = available_memory(device)
    probe = prepare_data(dataclasses.replace(settings, batch_size=1, steps=1, loader_batches=1), 1)
    return estimate_training_memory(probe, settings.mode, device, settings.recipe_config()), available


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
    ablations = {}
    for name in settings.ablate:
        if all(ours["settings"][key] == value for key, value in ABLATIONS[name].items()):
            continue  # already off in our path for this mode: nothing to compare
        variant = run_in_fresh_process(
            f"our path without {name} {batch}",
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


def parse_yaml_value(config: Path, key: str, default: Any) -> Any:
    return (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get(key, default)


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
        measured("TFLOP per step (counted, mean of the timed steps)", "flops_per_step", ".3g", 1e12),
        row("MFU", f"{blog['mfu']:.1%}", f"{ours['mfu']:.1%}"),
        measured("peak memory (GiB)", "peak_memory_bytes", ".2f", gib),
        measured("data loader samples/s", "loader_samples_per_s", ".3g"),
        measured(f"eval samples/s ({BLOG_NUM_BEAMS} beams each)", "eval_samples_per_s", ".3g"),
        row("eval generation", blog["eval_generation"], ours["eval_generation"]),
    ]
    for beams, rate in ours.get("eval_samples_per_s_by_beams", {}).items():
        if int(beams) != BLOG_NUM_BEAMS:
            lines.append(row(f"eval samples/s, ours at {beams} beam(s) (the YAML's)", "-", f"{rate:.3g}"))
    if "cache_build_seconds" in ours:
        rate = ours["cache_images"] / ours["cache_build_seconds"]
        lines.append(row("feature cache build", "-", f"{ours['cache_images']} images, {rate:.3g} images/s"))
        lines.append(
            row(
                f"train time for {ours['num_train_epochs']:g} epochs, cache build included",
                "-",
                "-",
                f"{result['train_ratio']:.2f}x",
            )
        )
    if "memory_estimate_gib" in result:
        estimate = result["memory_estimate_gib"]
        lines.append(
            row(
                f"memory estimated before loading (GiB; {result['memory_available_gib']:.1f} free)",
                f"{estimate['seed']:.2f}",
                f"{estimate['ours']:.2f}",
            )
        )
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
