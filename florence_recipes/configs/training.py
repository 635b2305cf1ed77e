"""`FlorenceTrainingArguments`: transformers' `Seq2SeqTrainingArguments` with a Florence-2 recipe's defaults and
switches, and the precision checks that depend on the machine (CPU bf16, DeepSpeed)."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accelerate.utils import parse_flag_from_env
from transformers import Seq2SeqTrainingArguments
from transformers.training_args import ParallelMode

from florence_recipes.configs.choices import CPU_BF16_CHOICES, FEATURE_CACHE_STORAGES, check_choice
from florence_recipes.configs.model import ModelArguments

logger = logging.getLogger(__name__)


@dataclass
class FlorenceTrainingArguments(Seq2SeqTrainingArguments):
    r"""`Seq2SeqTrainingArguments` for Florence-2 recipes. Only what differs from transformers' is listed here;
    every other argument is transformers' own (`python recipes/docvqa.py --help` lists them all). Each help
    text gives the default and, where transformers has another, why.

    > Defaults changed from `Seq2SeqTrainingArguments`
        predict_with_generate, remove_unused_columns, dataloader_num_workers, dataloader_persistent_workers,
        hub_private_repo, ddp_find_unused_parameters; overwrite_output_dir keeps its default but never deletes.
    > Parameters that control speed
        group_by_image, dedup_vision, feature_cache, feature_cache_dir, group_eval_by_length, cpu_bf16
    > Parameters that control the optimisation
        vision_learning_rate, nonfinite_loss_patience
    > Parameters that control pre-emption
        save_on_signal
    > Parameters that control what the final evaluation leaves on disk
        eval_report
    > Parameters that control the budget printed before training
        budget_only, budget_world_size, budget_mfu
    """

    # Parameters whose default values differ from Seq2SeqTrainingArguments
    predict_with_generate: bool = field(
        default=True,
        metadata={
            "help": "Default true (transformers: false): evaluation generates answers and scores them (ANLS), "
            "since the loss alone says little about answers."
        },
    )
    remove_unused_columns: bool = field(
        default=False,
        metadata={
            "help": "Default false (transformers: true): the collator needs the raw image and prompt columns, "
            "which the model's forward signature does not name."
        },
    )
    dataloader_num_workers: int = field(
        default=4,
        metadata={
            "help": "Default 4 (transformers: 0): DataLoader worker processes decode images and run the "
            "processor, so preprocessing never stalls the GPU (the blog's loop ran it on the main process)."
        },
    )
    dataloader_persistent_workers: bool = field(
        default=True,
        metadata={
            "help": "Default true (transformers: false): keep the workers alive between epochs and evaluations "
            "instead of re-forking them; turned off when dataloader_num_workers is 0."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Default false, as in transformers, but true never deletes: the output_dir's checkpoints are "
            "moved to previous-run-<time>/ before a new run starts there."
        },
    )
    hub_private_repo: bool | None = field(
        default=True,
        metadata={
            "help": "Default true (transformers: the Hub's default, public): a pushed fine-tune stays private "
            "until you publish it; set false to publish openly."
        },
    )
    ddp_find_unused_parameters: bool | None = field(
        default=False,
        metadata={
            "help": "Default false (transformers: true unless gradient checkpointing): every trainable Florence-2 "
            "parameter gets a gradient in the full, frozen_vision and lora modes, so DDP's search only costs time."
        },
    )

    # Parameters that control speed
    group_by_image: bool = field(
        default=False,
        metadata={
            "help": "Default false. Training order that puts the questions about one image (`image_id`) in the "
            "same batch, images shuffled every epoch; pairs with dedup_vision."
        },
    )
    dedup_vision: bool = field(
        default=False,
        metadata={
            "help": "Default false. Run the vision tower once per unique image of a batch (training and "
            "evaluation) and share its features between that image's questions (same loss and predictions, "
            "less compute)."
        },
    )
    feature_cache: str = field(
        default="none",
        metadata={
            "help": "Default none. Frozen vision tower only (frozen_vision, lora): compute each training image's "
            "features once and reuse them every epoch. memory: in RAM; disk: memory-mapped file in "
            "feature_cache_dir, reused by later runs while model, image size, dtype and data are unchanged.",
            "choices": FEATURE_CACHE_STORAGES,
        },
    )
    feature_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Default <output_dir>/feature_cache. Folder of the feature_cache=disk file."},
    )
    group_eval_by_length: bool = field(
        default=True,
        metadata={
            "help": "Default true. Batch evaluation prompts of similar length (less padding in batched "
            "generation), the questions about one image together (for dedup_vision); scored and returned in "
            "dataset order."
        },
    )
    cpu_bf16: str = field(
        default="auto",
        metadata={
            "help": "Default auto. What `bf16: true` means in a run on the CPU. auto: bf16 autocast only on a CPU "
            "with native bf16 matmuls (AVX512-BF16 / AMX), else fp32, since emulated bf16 matmuls are many times "
            "slower than fp32 ones; true: always autocast; false: always fp32. GPU runs are unaffected.",
            "choices": CPU_BF16_CHOICES,
        },
    )

    # Parameters that control the optimisation
    vision_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Default: learning_rate. Peak learning rate of the DaViT vision tower, on the same schedule. "
            "Lower than learning_rate keeps a young tower's features from collapsing to a constant while the "
            "language model learns the answers' prior (recipes/docvqa/learn_tiny.yaml); training_mode=full only."
        },
    )
    nonfinite_loss_patience: int = field(
        default=3,
        metadata={
            "help": "Default 3. Optimizer steps in a row with a NaN/inf training loss that are skipped (never "
            "applied) before the run stops with the step number, keeping the last good checkpoint; 0 stops at "
            "the first. (transformers' logging_nan_inf_filter only hides such losses from the logs.)"
        },
    )

    # Parameters that control pre-emption
    save_on_signal: str = field(
        default="SIGTERM,SIGUSR1",
        metadata={
            "help": "Default SIGTERM,SIGUSR1 (what Kubernetes and Slurm send before they stop a job). Comma-"
            "separated signals that make training save a full checkpoint at the end of the current optimizer "
            "step and exit with code 75 (docs/faults.md); none: die at once, as transformers does."
        },
    )

    # Parameters that control what the final evaluation leaves on disk
    eval_report: bool = field(
        default=True,
        metadata={
            "help": "Default: true (no transformers equivalent). After the final evaluation, write "
            "<output_dir>/eval/: predictions.jsonl, metrics.json, submission.json and report.html (worst "
            "examples first, with thumbnails), from the predictions that evaluation already generated."
        },
    )

    # Parameters that control the budget printed before training
    budget_only: bool = field(
        default=False,
        metadata={
            "help": "Default false. Print the run's budget (optimizer steps, samples seen, estimated H100 "
            "GPU-hours) and stop, before any dataset or model is loaded (offline for the Hub datasets that "
            "florence_recipes.training.budget knows)."
        },
    )
    budget_world_size: int | None = field(
        default=None,
        metadata={
            "help": "Default: the processes launched. GPUs the budget assumes, e.g. 8 for an 8-GPU plan."
        },
    )
    budget_mfu: float = field(
        default=0.35,
        metadata={"help": "Default 0.35. Model FLOPs utilisation the budget's H100 GPU-hours assume (0..1)."},
    )

    def __post_init__(self) -> None:
        # Checked before the parent's __post_init__, whose own messages are a device error (bf16 on CPU) or a
        # traceback from inside the DeepSpeed integration, and before cpu_bf16 may turn bf16 off.
        self._check_own_options()
        self._check_deepspeed()
        super().__post_init__()
        self._check_launch()
        if self.feature_cache == "disk" and self.feature_cache_dir is None:
            self.feature_cache_dir = str(Path(self.output_dir) / "feature_cache")

    def _check_own_options(self) -> None:
        if self.bf16 and self.fp16:
            raise ValueError(
                "bf16 and fp16 are both true: choose one mixed precision (bf16 where the GPU has it)"
            )
        check_choice("cpu_bf16", self.cpu_bf16, CPU_BF16_CHOICES)
        check_choice("feature_cache", self.feature_cache, FEATURE_CACHE_STORAGES)
        self.requested_bf16 = self.bf16  # what the recipe asked for, checked against the weights' dtype
        if self.bf16 and runs_on_cpu(self.use_cpu) and not cpu_bf16_wanted(self.cpu_bf16):
            logger.info(
                "bf16: true runs as fp32 on this CPU (cpu_bf16=%s; no native bf16 matmuls)", self.cpu_bf16
            )
            self.bf16 = False
        if self.dataloader_num_workers == 0:
            # Persistent workers need workers; 0 means the main process loads the data.
            self.dataloader_persistent_workers = False
        if self.budget_only:
            # Nothing trains: a GPU recipe (bf16) prints its budget on any machine, the laptop included.
            self.use_cpu = True
        if not 0 < self.budget_mfu <= 1:
            raise ValueError(f"budget_mfu must be in (0, 1], got {self.budget_mfu}")
        if self.budget_world_size is not None and self.budget_world_size < 1:
            raise ValueError(f"budget_world_size must be >= 1, got {self.budget_world_size}")
        if self.vision_learning_rate is not None and self.vision_learning_rate <= 0:
            raise ValueError(f"vision_learning_rate must be > 0, got {self.vision_learning_rate}")
        if self.nonfinite_loss_patience < 0:
            raise ValueError(f"nonfinite_loss_patience must be >= 0, got {self.nonfinite_loss_patience}")
        self.save_on_signal = ",".join(save_signal_names(self.save_on_signal))
        if self.group_eval_by_length and self.batch_eval_metrics:
            raise ValueError(
                "group_eval_by_length needs batch_eval_metrics=false (metrics need the whole set)"
            )

    def _check_deepspeed(self) -> None:
        if self.vision_learning_rate is not None and (source := _deepspeed_optimizer_source(self.deepspeed)):
            # DeepSpeed then builds its own optimizer from that section, with one rate for every parameter.
            raise ValueError(
                f'vision_learning_rate needs the Trainer\'s optimizer, but {source} has its own "optimizer" '
                "section: remove that section (the recipe's optim / learning_rate fill DeepSpeed's) or drop "
                "vision_learning_rate"
            )
        uses_deepspeed = self.deepspeed or parse_flag_from_env("ACCELERATE_USE_DEEPSPEED")
        if uses_deepspeed and importlib.util.find_spec("deepspeed") is None:
            source = f"--deepspeed {self.deepspeed}" if self.deepspeed else "the accelerate DeepSpeed config"
            raise ValueError(f"{source} needs DeepSpeed, which is not installed: pip install -e .[deepspeed]")
        if uses_deepspeed and (self.use_cpu or parse_flag_from_env("ACCELERATE_USE_CPU")):
            # transformers' CPU path builds plain DDP and silently ignores the DeepSpeed config.
            raise ValueError(
                "use_cpu drops the DeepSpeed config (plain DDP would run); to run DeepSpeed on CPU, drop "
                "use_cpu and set --ddp_backend gloo"
            )

    def _check_launch(self) -> None:
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched > 1 and (self.world_size != launched or self.parallel_mode != ParallelMode.DISTRIBUTED):
            # E.g. no GPU and no use_cpu: accelerate finds no backend, so it neither shards the data nor wraps
            # the model, and each process would silently train its own copy into the same output_dir.
            raise ValueError(
                f"the launcher started {launched} processes but they do not train together "
                f"(world size {self.world_size}); without a GPU add --use_cpu true (DDP over gloo), or "
                "--ddp_backend gloo with a DeepSpeed config"
            )

    # Seq2SeqTrainingArguments' dataclass-generated __repr__ prints the Hub token; TrainingArguments.__str__
    # (what logs use) redacts it, so repr (debuggers, tracebacks, `%r`) does the same.
    __repr__ = Seq2SeqTrainingArguments.__str__

    def __getstate__(self) -> dict[str, Any]:
        # The Trainer pickles its arguments into training_args.bin in every checkpoint and pushed folder:
        # leave the Hub token out (the live object keeps it for pushing), as `to_dict()` does for the logs.
        state = self.__dict__.copy()
        state.update({name: None for name in state if name.endswith("_token")})
        return state


def save_signal_names(option: str) -> list[str]:
    """The signal names of a `save_on_signal` value ("SIGTERM,usr1" -> ["SIGTERM", "SIGUSR1"]; "none" -> [])."""
    if option.strip().lower() in ("", "none"):
        return []
    names = []
    for word in option.split(","):
        name = word.strip().upper()
        name = name if name.startswith("SIG") else f"SIG{name}"
        if name not in signal.Signals.__members__ or name in ("SIGKILL", "SIGSTOP"):
            raise ValueError(
                f"save_on_signal: {word.strip()!r} is not a signal a process can catch (e.g. SIGTERM,SIGUSR1, or none)"
            )
        names.append(name)
    return list(dict.fromkeys(names))


def runs_on_cpu(use_cpu: bool) -> bool:
    """Whether a Trainer run will compute on the CPU (asked for, or no accelerator present)."""
    import torch

    return (
        use_cpu
        or parse_flag_from_env("ACCELERATE_USE_CPU")
        or not (torch.cuda.is_available() or torch.xpu.is_available() or torch.backends.mps.is_available())
    )


def cpu_has_native_bf16() -> bool:
    """oneDNN runs bf16 matmuls in hardware (AVX512-BF16 or AMX); without, it emulates them, slowly."""
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cpu_bf16_wanted(cpu_bf16: str) -> bool:
    return cpu_bf16 == "true" or (cpu_bf16 == "auto" and cpu_has_native_bf16())


def check_precision(model_args: ModelArguments, training_args: FlorenceTrainingArguments) -> None:
    """Refuse mixed-precision flags that contradict the dtype the weights are loaded in."""
    if training_args.fp16 and model_args.torch_dtype in ("bfloat16", "float16"):
        raise ValueError(
            f"fp16 with torch_dtype={model_args.torch_dtype}: fp16 mixed precision needs float32 weights for "
            "its gradient scaler; use torch_dtype=float32, or bf16 with torch_dtype=bfloat16"
        )
    if training_args.requested_bf16 and model_args.torch_dtype == "float16":
        raise ValueError(
            "bf16 with torch_dtype=float16: load the weights in float32 (mixed precision) or bfloat16"
        )


def _deepspeed_optimizer_source(deepspeed: str | dict[str, Any] | None) -> str | None:
    """Which DeepSpeed config, if any, defines its own optimizer: `--deepspeed` (a JSON file or dict) or the
    `deepspeed_config_file` of an accelerate config (which `accelerate launch` passes on in the environment)."""
    candidates: list[tuple[str, str | dict[str, Any] | None]] = [("--deepspeed", deepspeed)]
    accelerate_file = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none")
    if accelerate_file != "none":
        candidates.append(("the accelerate config's deepspeed_config_file", accelerate_file))
    for source, config in candidates:
        if isinstance(config, str):
            source = f"{source} {config}"
            try:
                config = json.loads(Path(config).read_text())
            except (OSError, ValueError) as err:
                raise ValueError(f"DeepSpeed config {config}: {str(err).splitlines()[0]}") from None
        if isinstance(config, dict) and "optimizer" in config:
            return source
    return None
