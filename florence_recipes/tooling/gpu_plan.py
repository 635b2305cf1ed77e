"""What each check of `recipes/gpu_check.py` runs at: real sizes on a GPU, tiny ones on a CPU dry run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from florence_recipes.tooling.benchmark_paths import RECIPES_DIR, BenchmarkSettings, parse_yaml_value

REPO_ROOT = Path(__file__).resolve().parents[2]
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


# Relative time limits (x the per-check base limit).
CHECK_WEIGHTS = {"base_full": 1.5, "torch_compile": 1.5, "eval_generation": 1.25}
