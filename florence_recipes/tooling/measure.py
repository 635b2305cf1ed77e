"""What the benchmark and the GPU check measure with: the device, its peak, peak memory, step times, the FLOPs
of recorded steps, a DataLoader's own rate, and a fresh process per measurement."""

from __future__ import annotations

import gc
import multiprocessing
import os
import platform
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import psutil
import torch
from transformers import TrainerCallback

from florence_recipes.configs.training import cpu_has_native_bf16
from florence_recipes.errors import RecipeError
from florence_recipes.training.flops import CUDA_PEAK_TFLOPS, count_flops


def synchronize(device: torch.device) -> None:
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
        synchronize(device)
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        synchronize(device)
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
            synchronize(self.device)
            self._last = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        synchronize(self.device)
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


def loader_samples_per_s(batches: Iterator[Any], num_batches: int, batch_size: int) -> float:
    """Samples/s of a DataLoader alone, from its first batch on (worker start-up excluded)."""
    next(batches)
    start = time.perf_counter()
    for _ in range(num_batches):
        next(batches)
    return num_batches * batch_size / (time.perf_counter() - start)


def release_memory(device: torch.device) -> None:
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
