"""Our recipe path in the benchmark: `FlorenceTrainer` with the mode's YAML on the benchmark's rows, each step
timed and its batch kept so that its FLOPs are counted after the timing."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from transformers import PrinterCallback, set_seed

from florence_recipes.configs.data import DataArguments
from florence_recipes.configs.model import ModelArguments
from florence_recipes.configs.parser import parse_recipe_args
from florence_recipes.configs.training import FlorenceTrainingArguments
from florence_recipes.data.sources import data_sources
from florence_recipes.errors import RecipeError
from florence_recipes.models.loading import (
    apply_training_mode,
    load_model,
    load_processor,
    set_generation_length,
)
from florence_recipes.tooling.benchmark_paths import (
    BenchmarkData,
    BenchmarkSettings,
    parse_yaml_value,
    path_result,
)
from florence_recipes.tooling.blog_loop import BLOG_NUM_BEAMS
from florence_recipes.tooling.measure import (
    PeakMemory,
    StepTimer,
    count_step_flops,
    loader_samples_per_s,
    synchronize,
)
from florence_recipes.training.trainer import FlorenceTrainer


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


# The switches an ablation may change, reported with our path's result.
_REPORTED_SETTINGS = (
    "bf16",
    "group_by_image",
    "dedup_vision",
    "feature_cache",
    "dataloader_num_workers",
    "optim",
    "cpu_bf16",
)


def _ours_arguments(
    settings: BenchmarkSettings,
    data: BenchmarkData,
    device: torch.device,
    output_dir: Path,
    changes: dict[str, Any],
) -> tuple[ModelArguments, DataArguments, FlorenceTrainingArguments]:
    """The mode's YAML with the benchmark's overrides and `changes`, parsed as the recipe parses it."""
    config = settings.recipe_config()
    model_args, data_args, training_args = parse_recipe_args(
        ["--config", str(config), *_ours_overrides(settings, data, device, output_dir, changes)]
    )
    if model_args.training_mode != settings.mode:
        raise RecipeError(
            f"{config} trains training_mode={model_args.training_mode}, not --mode {settings.mode}"
        )
    # More workers than cores only adds contention (a 2-core CI machine vs the YAML's 8 for a GPU server).
    training_args.dataloader_num_workers = min(training_args.dataloader_num_workers, os.cpu_count() or 1)
    if training_args.dataloader_num_workers == 0:
        training_args.dataloader_persistent_workers = False
    return model_args, data_args, training_args


def _eval_rates(
    trainer: FlorenceTrainer, eval_beams: tuple[int, ...], device: torch.device, num_items: int
) -> dict[int, float]:
    """Eval samples/s at each number of beams."""
    if eval_beams:
        # Start the persistent eval workers first: in a real run they start once, not at every evaluation.
        next(iter(trainer.get_eval_dataloader()))
    rates = {}
    for num_beams in eval_beams:
        start = time.perf_counter()
        trainer.evaluate(num_beams=num_beams)
        synchronize(device)
        rates[num_beams] = num_items / (time.perf_counter() - start)
    return rates


def _ours_trainer(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: FlorenceTrainingArguments,
    data: BenchmarkData,
    timer: StepTimer,
) -> BatchRecordingTrainer:
    """The recipe's model and Trainer on the benchmark rows, `timer` timing each step."""
    model = load_model(model_args)
    set_generation_length(model, training_args.generation_max_length)
    model = apply_training_mode(model, model_args)
    trainer = BatchRecordingTrainer(
        model=model,
        args=training_args,
        processor=load_processor(model_args),
        sources=data_sources(data_args, training_args),
        train_dataset=data.train_rows,
        eval_dataset=data.eval_rows,
        max_target_length=data_args.max_target_length,
        training_mode=model_args.training_mode,
        callbacks=[timer],
    )
    trainer.remove_callback(PrinterCallback)  # the table reports the numbers
    return trainer


def _eval_generation(training_args: FlorenceTrainingArguments, eval_beams: tuple[int, ...]) -> str:
    return (
        f"batches of {training_args.per_device_eval_batch_size}, {'/'.join(map(str, eval_beams))} beam(s)"
        f"{', grouped by prompt length' if training_args.group_eval_by_length else ''}"
        f"{', each image encoded once' if training_args.dedup_vision else ''}"
    )


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
    model_args, data_args, training_args = _ours_arguments(settings, data, device, output_dir, changes or {})
    yaml_batch_size = parse_yaml_value(config, "per_device_train_batch_size", None)
    # A cache left by an earlier benchmark run would be reused; time its build instead.
    shutil.rmtree(output_dir / "feature_cache", ignore_errors=True)
    set_seed(settings.seed)
    with PeakMemory(device) as memory:
        timer = StepTimer(device, settings.warmup_steps)
        trainer = _ours_trainer(model_args, data_args, training_args, data, timer)
        cache: dict[str, Any] = {}
        if training_args.feature_cache != "none":
            start = time.perf_counter()
            num_images = len(trainer.prepare_feature_cache().rows)
            cache = {"cache_images": num_images, "cache_build_seconds": time.perf_counter() - start}
        loader_rate = loader_samples_per_s(
            iter(trainer.get_train_dataloader()),
            min(settings.loader_batches, len(data.train_rows) // settings.batch_size - 1),
            settings.batch_size,
        )
        trainer.train()
    step_flops = count_step_flops(trainer.step_batches[settings.warmup_steps :], trainer.replay_step)
    trainer.step_batches.clear()
    eval_rates = _eval_rates(trainer, eval_beams, device, len(data.eval_rows))
    precision = "bf16 autocast" if training_args.bf16 else "fp16 autocast" if training_args.fp16 else "fp32"
    settings_used = {key: getattr(training_args, key) for key in _REPORTED_SETTINGS}
    del trainer
    return path_result(
        timer.step_seconds,
        step_flops,
        settings.batch_size,
        data.tokens_per_sample,
        peak_tflops,
        memory.peak_bytes,
        loader_rate,
        eval_rates[eval_beams[0]] if eval_beams else None,
        precision=f"{precision}, {model_args.attn_implementation}, weights {model_args.torch_dtype}",
        eval_generation=_eval_generation(training_args, eval_beams),
        config=str(config),
        settings=settings_used,
        eval_samples_per_s_by_beams=eval_rates,
        first_step_seconds=timer.first_step_seconds,
        num_train_epochs=training_args.num_train_epochs,
        yaml_batch_size=yaml_batch_size,
        **cache,
    )
