"""Typed recipe arguments and the YAML + command-line parser.

We extend transformers' `HfArgumentParser` rather than TRL's `TrlParser`: it is the parser every
transformers example uses, it keeps TRL (and its own dependency tree) out of a project that trains no
policy, and the one feature we borrow from TRL — YAML values become argparse *defaults*, so any CLI
flag overrides them — is a few lines on top of it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NoReturn

import yaml
from accelerate.utils import parse_flag_from_env
from transformers import HfArgumentParser, Seq2SeqTrainingArguments
from transformers.training_args import ParallelMode

TRAINING_MODES = ("full", "frozen_vision", "lora")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")
TORCH_DTYPES = ("auto", "float32", "bfloat16", "float16")
MIXTURE_STOPPING_STRATEGIES = ("first_exhausted", "all_exhausted")
FEATURE_CACHE_STORAGES = ("none", "memory", "disk")
CPU_BF16_CHOICES = ("auto", "true", "false")

logger = logging.getLogger(__name__)
NO_IMAGE_POLICIES = ("skip", "blank")  # rows without an image (florence_recipes.tasks)
MULTI_IMAGE_POLICIES = ("skip", "first", "concat")  # rows with several images (florence_recipes.tasks)
BAD_SAMPLE_POLICIES = ("raise", "skip")  # florence_recipes.validation


@dataclass
class ModelArguments:
    """Which Florence-2 checkpoint to load and which of its parameters to train."""

    model_name_or_path: str = field(
        default="florence-community/Florence-2-base",
        metadata={
            "help": "Hub id (e.g. florence-community/Florence-2-large) or local folder of a native Florence-2."
        },
    )
    model_revision: str = field(
        default="main", metadata={"help": "Branch, tag or commit of the Hub checkpoint."}
    )
    torch_dtype: str = field(
        default="float32",
        metadata={
            "help": "dtype the weights are loaded in. Keep float32 master weights with `bf16: true` mixed precision; "
            "`bfloat16` loads bf16 weights (less memory, pure-bf16 training).",
            "choices": TORCH_DTYPES,
        },
    )
    attn_implementation: str = field(
        default="sdpa",
        metadata={
            "help": "Attention kernel: sdpa works everywhere; flash_attention_2 needs `pip install -e .[flash-attn]`.",
            "choices": ATTN_IMPLEMENTATIONS,
        },
    )
    training_mode: str = field(
        default="full",
        metadata={
            "help": "full: train everything; frozen_vision: freeze the DaViT vision tower and its projector; "
            "lora: LoRA adapters on the language model, everything else frozen.",
            "choices": TRAINING_MODES,
        },
    )
    lora_r: int | None = field(default=None, metadata={"help": "LoRA rank (lora mode only; default 16)."})
    lora_alpha: int | None = field(
        default=None, metadata={"help": "LoRA alpha (lora mode only; default 2 * r)."}
    )
    lora_dropout: float | None = field(
        default=None, metadata={"help": "LoRA dropout (lora mode only; default 0.05)."}
    )
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Linear layers of the language model that get adapters (lora mode only; default: "
            "q_proj k_proj v_proj out_proj fc1 fc2)."
        },
    )
    merge_lora: bool | None = field(
        default=None,
        metadata={
            "help": "lora mode only: save the adapters merged into a plain Florence-2 checkpoint (true) or "
            "as a PEFT adapter folder (false, the default)."
        },
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "Never needed for native Florence-2 checkpoints; only for custom code you have reviewed."
        },
    )
    allow_pickled_weights: bool = field(
        default=False,
        metadata={
            "help": "Also load PyTorch .bin weights (unpickled, which can run code) when a checkpoint has no "
            ".safetensors; only for checkpoints you trust."
        },
    )

    def __post_init__(self) -> None:
        _check_choice("torch_dtype", self.torch_dtype, TORCH_DTYPES)
        _check_choice("attn_implementation", self.attn_implementation, ATTN_IMPLEMENTATIONS)
        _check_choice("training_mode", self.training_mode, TRAINING_MODES)
        if self.attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            raise ValueError(
                "attn_implementation=flash_attention_2 needs flash-attn: pip install -e .[flash-attn]"
            )
        lora_options = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "merge_lora")
        if self.training_mode != "lora":
            given = [name for name in lora_options if getattr(self, name) is not None]
            if given:
                raise ValueError(
                    f"{', '.join(given)}: valid only with training_mode=lora (got {self.training_mode})"
                )
            return
        self.lora_r = 16 if self.lora_r is None else self.lora_r
        self.lora_alpha = 2 * self.lora_r if self.lora_alpha is None else self.lora_alpha
        self.lora_dropout = 0.05 if self.lora_dropout is None else self.lora_dropout
        self.lora_target_modules = self.lora_target_modules or [
            "q_proj",
            "k_proj",
            "v_proj",
            "out_proj",
            "fc1",
            "fc2",
        ]
        self.merge_lora = bool(self.merge_lora)
        if self.lora_r <= 0:
            raise ValueError(f"lora_r must be positive, got {self.lora_r}")


@dataclass
class DataArguments:
    """Which dataset to train and evaluate on, and how to turn its rows into prompts and targets."""

    task: str = field(
        default="docvqa",
        metadata={"help": "Registered task that maps a dataset row to (image, prompt, target, answers)."},
    )
    dataset_name: str = field(
        default="HuggingFaceM4/DocumentVQA",
        metadata={
            "help": "Hub dataset id or local folder in the same layout, loaded with `datasets.load_dataset`; or "
            "your own .jsonl / .parquet file, or a folder of {split}.jsonl / {split}.parquet or imagefolder."
        },
    )
    dataset_config: str | None = field(
        default=None, metadata={"help": "Dataset configuration (subset) name."}
    )
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str = field(
        default="validation", metadata={"help": "Split to evaluate on (scored with ANLS)."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N training examples (quick runs, debugging)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N evaluation examples."}
    )
    max_target_length: int = field(
        default=128,
        metadata={"help": "Target token budget; longer answers are truncated (DocVQA answers: ~10)."},
    )
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes for the one-off `datasets.map` that standardises rows."}
    )
    build_offline_fixtures: bool = field(
        default=False,
        metadata={
            "help": "Smoke runs: if `model_name_or_path` / `dataset_name` are missing local folders, build the tiny "
            "random Florence-2 and the synthetic DocVQA there first (no Hub access needed)."
        },
    )
    dataset_mixture: list[dict[str, Any]] | str | None = field(
        default=None,
        metadata={
            "help": "Train on several sources instead of task/dataset_name/dataset_config: a YAML list of "
            "{dataset, config, split, eval_split, weight or fraction, columns, task, name} (see "
            "recipes/cauldron/mixture.yaml); on the command line, the same list as JSON."
        },
    )
    mixture_stopping_strategy: str = field(
        default="first_exhausted",
        metadata={
            "help": "With mixture weights: stop when a source runs out (first_exhausted, nothing repeats) or "
            "when all did (all_exhausted, smaller sources repeat).",
            "choices": MIXTURE_STOPPING_STRATEGIES,
        },
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Stream the datasets instead of downloading them first (needs max_steps; splits may only "
            "be row ranges such as train[1000:]; the eval split is read into memory)."
        },
    )
    no_image_policy: str = field(
        default="skip",
        metadata={
            "help": "Rows without an image (the Cauldron has some): skip them, or use a blank white image.",
            "choices": NO_IMAGE_POLICIES,
        },
    )
    multi_image_policy: str = field(
        default="skip",
        metadata={
            "help": "Rows with several images (Florence-2 takes one): skip them, keep the first, or concat "
            "them side by side.",
            "choices": MULTI_IMAGE_POLICIES,
        },
    )
    image_fraction: float = field(
        default=1.0,
        metadata={
            "help": "Multi-turn sources (docmatix, cauldron): keep this seeded share of the training rows (images), "
            "chosen by a hash of each row's turns and `seed`, so it works when streaming; mixture entries may set "
            "their own `image_fraction`."
        },
    )
    turn_fraction: float = field(
        default=1.0,
        metadata={
            "help": "Multi-turn sources: keep this seeded share of each kept row's Q/A turns, independently of "
            "image_fraction (image_fraction 0.2 + turn_fraction 0.2: a fifth of the images, 0.04 of the Q/A pairs)."
        },
    )
    on_bad_sample: str = field(
        default="raise",
        metadata={
            "help": "Samples that cannot be used (corrupt/missing/oversized image, empty question, missing or "
            "non-text answers), found before training: raise stops at the first with its id and source; skip "
            "drops them and reports counts per reason (logs and all_results.json: <split>_bad_samples_<reason>).",
            "choices": BAD_SAMPLE_POLICIES,
        },
    )

    def __post_init__(self) -> None:
        if isinstance(self.dataset_mixture, str):  # from the command line; a YAML file gives the list itself
            try:
                self.dataset_mixture = yaml.safe_load(self.dataset_mixture)
            except yaml.YAMLError as err:
                raise ValueError(
                    f"dataset_mixture: not valid JSON/YAML ({str(err).splitlines()[0]})"
                ) from None
        _check_choice(
            "mixture_stopping_strategy", self.mixture_stopping_strategy, MIXTURE_STOPPING_STRATEGIES
        )
        _check_choice("no_image_policy", self.no_image_policy, NO_IMAGE_POLICIES)
        _check_choice("multi_image_policy", self.multi_image_policy, MULTI_IMAGE_POLICIES)
        _check_choice("on_bad_sample", self.on_bad_sample, BAD_SAMPLE_POLICIES)
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        for name in ("image_fraction", "turn_fraction"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if self.max_target_length <= 2:
            raise ValueError(
                f"max_target_length must leave room for <s> and </s>, got {self.max_target_length}"
            )


@dataclass
class FlorenceTrainingArguments(Seq2SeqTrainingArguments):
    """`Seq2SeqTrainingArguments` with defaults that are right for Florence-2 recipes."""

    predict_with_generate: bool = field(
        default=True, metadata={"help": "Score evaluation with real generation (ANLS), not only the loss."}
    )
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Keep raw columns: the collator turns images and prompts into tensors."},
    )
    dataloader_num_workers: int = field(
        default=4, metadata={"help": "DataLoader worker processes that decode images and run the processor."}
    )
    dataloader_persistent_workers: bool = field(
        default=True, metadata={"help": "Keep DataLoader workers alive between epochs and evaluations."}
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start a new run in an output_dir that holds checkpoints; they are moved to "
            "previous-run-<time>/ first, never deleted."
        },
    )
    hub_private_repo: bool | None = field(
        default=True, metadata={"help": "Create the Hub repository as private (set false to publish openly)."}
    )
    nonfinite_loss_patience: int = field(
        default=3,
        metadata={
            "help": "Optimizer steps in a row with a NaN/inf training loss that are skipped (never applied) before "
            "the run stops with the step number, keeping the last good checkpoint; 0 stops at the first."
        },
    )
    group_by_image: bool = field(
        default=False,
        metadata={
            "help": "Training order that puts the questions about one image (`image_id`) in the same batch, "
            "images shuffled every epoch; pairs with dedup_vision."
        },
    )
    dedup_vision: bool = field(
        default=False,
        metadata={
            "help": "Run the vision tower once per unique image of a batch (training and evaluation) and share "
            "its features between that image's questions (same loss and predictions, less compute)."
        },
    )
    feature_cache: str = field(
        default="none",
        metadata={
            "help": "Frozen vision tower only (frozen_vision, lora): compute each training image's features "
            "once and reuse them every epoch. memory: in RAM; disk: memory-mapped file in feature_cache_dir, "
            "reused by later runs while model, image size, dtype and data are unchanged.",
            "choices": FEATURE_CACHE_STORAGES,
        },
    )
    feature_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Folder of the feature_cache=disk file (default: <output_dir>/feature_cache)."},
    )
    ddp_find_unused_parameters: bool | None = field(
        default=False,
        metadata={
            "help": "DDP: search every step for parameters without a gradient. Off: every trainable Florence-2 "
            "parameter gets one in the full, frozen_vision and lora modes, so the search only costs time."
        },
    )
    budget_only: bool = field(
        default=False,
        metadata={
            "help": "Print the run's budget (optimizer steps, samples seen, estimated H100 GPU-hours) and stop, "
            "before any dataset or model is loaded (offline for Hub datasets of florence_recipes.budget)."
        },
    )
    budget_world_size: int | None = field(
        default=None,
        metadata={
            "help": "GPUs the budget assumes (default: the processes launched); e.g. 8 for an 8-GPU plan."
        },
    )
    budget_mfu: float = field(
        default=0.35,
        metadata={"help": "Model FLOPs utilisation the budget's H100 GPU-hours assume (0..1)."},
    )
    vision_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Peak learning rate of the DaViT vision tower, on the same schedule (default: learning_rate). "
            "Lower than learning_rate keeps a young tower's features from collapsing to a constant while the "
            "language model learns the answers' prior (recipes/docvqa/learn_tiny.yaml); training_mode=full only."
        },
    )
    group_eval_by_length: bool = field(
        default=True,
        metadata={
            "help": "Batch evaluation prompts of similar length (less padding in batched generation), the "
            "questions about one image together (for dedup_vision); scored and returned in dataset order."
        },
    )

    cpu_bf16: str = field(
        default="auto",
        metadata={
            "help": "What `bf16: true` means in a run on the CPU. auto: bf16 autocast only on a CPU with native "
            "bf16 matmuls (AVX512-BF16 / AMX), else fp32, since emulated bf16 matmuls are many times slower "
            "than fp32 ones; true: always autocast; false: always fp32. GPU runs are unaffected.",
            "choices": CPU_BF16_CHOICES,
        },
    )

    def __post_init__(self) -> None:
        # Checked before the parent's __post_init__, whose own messages are a device error (bf16 on CPU) or a
        # traceback from inside the DeepSpeed integration, and before cpu_bf16 may turn bf16 off.
        if self.bf16 and self.fp16:
            raise ValueError(
                "bf16 and fp16 are both true: choose one mixed precision (bf16 where the GPU has it)"
            )
        _check_choice("cpu_bf16", self.cpu_bf16, CPU_BF16_CHOICES)
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
        if self.vision_learning_rate is not None and (source := _deepspeed_optimizer_source(self.deepspeed)):
            # DeepSpeed then builds its own optimizer from that section, with one rate for every parameter.
            raise ValueError(
                f'vision_learning_rate needs the Trainer\'s optimizer, but {source} has its own "optimizer" '
                "section: remove that section (the recipe's optim / learning_rate fill DeepSpeed's) or drop "
                "vision_learning_rate"
            )
        if self.nonfinite_loss_patience < 0:
            raise ValueError(f"nonfinite_loss_patience must be >= 0, got {self.nonfinite_loss_patience}")
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
        _check_choice("feature_cache", self.feature_cache, FEATURE_CACHE_STORAGES)
        super().__post_init__()
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched > 1 and (self.world_size != launched or self.parallel_mode != ParallelMode.DISTRIBUTED):
            # E.g. no GPU and no use_cpu: accelerate finds no backend, so it neither shards the data nor wraps
            # the model, and each process would silently train its own copy into the same output_dir.
            raise ValueError(
                f"the launcher started {launched} processes but they do not train together "
                f"(world size {self.world_size}); without a GPU add --use_cpu true (DDP over gloo), or "
                "--ddp_backend gloo with a DeepSpeed config"
            )
        if self.group_eval_by_length and self.batch_eval_metrics:
            raise ValueError(
                "group_eval_by_length needs batch_eval_metrics=false (metrics need the whole set)"
            )
        if self.feature_cache == "disk" and self.feature_cache_dir is None:
            self.feature_cache_dir = str(Path(self.output_dir) / "feature_cache")

    # Seq2SeqTrainingArguments' dataclass-generated __repr__ prints the Hub token; TrainingArguments.__str__
    # (what logs use) redacts it, so repr (debuggers, tracebacks, `%r`) does the same.
    __repr__ = Seq2SeqTrainingArguments.__str__

    def __getstate__(self) -> dict[str, Any]:
        # The Trainer pickles its arguments into training_args.bin in every checkpoint and pushed folder:
        # leave the Hub token out (the live object keeps it for pushing), as `to_dict()` does for the logs.
        state = self.__dict__.copy()
        state.update({name: None for name in state if name.endswith("_token")})
        return state


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


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    # argparse only checks `choices` for values typed on the command line, not for YAML defaults.
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of: {', '.join(choices)}")


class RecipeArgumentParser(HfArgumentParser):
    """`HfArgumentParser` that reads `--config recipe.yaml` and lets every CLI flag override it."""

    def __init__(self, dataclass_types: tuple[type, ...], **kwargs: Any) -> None:
        super().__init__(dataclass_types, **kwargs)
        self.add_argument(
            "--config", type=str, default=None, help="YAML recipe; CLI flags override its values."
        )

    def error(self, message: str) -> NoReturn:
        # One line, no usage dump: the usage of ~200 training flags buries the actual problem.
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(2)

    def parse(self, args: list[str] | None = None) -> tuple[Any, ...]:
        args = sys.argv[1:] if args is None else list(args)
        config_path, rest = self._split_config_flag(args)
        if config_path is not None:
            self._apply_yaml_defaults(Path(config_path))
        try:
            parsed = self.parse_args_into_dataclasses(rest, look_for_args_file=False)
        except ValueError as err:  # validation in the dataclasses' __post_init__
            self.error(str(err).strip().splitlines()[0])
        return parsed[: len(self.dataclass_types)]

    def _split_config_flag(self, args: list[str]) -> tuple[str | None, list[str]]:
        config, rest, i = None, [], 0
        while i < len(args):
            if args[i] == "--config":
                if i + 1 >= len(args):
                    self.error("--config needs a path to a YAML file")
                config, i = args[i + 1], i + 2
            elif args[i].startswith("--config="):
                config, i = args[i].split("=", 1)[1], i + 1
            else:
                rest.append(args[i])
                i += 1
        return config, rest

    def _apply_yaml_defaults(self, path: Path) -> None:
        if not path.is_file():
            self.error(f"config file not found: {path}")
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            self.error(f"{path}: invalid YAML ({str(err).splitlines()[0]})")
        if not isinstance(values, dict):
            self.error(f"{path}: expected a mapping of argument names to values")
        known = {f.name for dtype in self.dataclass_types for f in fields(dtype) if f.init}
        unknown = sorted(set(values) - known)
        if unknown:
            self.error(f"{path}: unknown key(s) {', '.join(repr(k) for k in unknown)}")
        self.set_defaults(**values)
        for action in self._actions:
            if action.dest in values:
                action.required = False  # given in the YAML, so no longer required on the CLI


def parse_recipe_args(
    args: list[str] | None = None,
) -> tuple[ModelArguments, DataArguments, FlorenceTrainingArguments]:
    parser = RecipeArgumentParser((ModelArguments, DataArguments, FlorenceTrainingArguments))
    model_args, data_args, training_args = parser.parse(args)
    try:
        check_precision(model_args, training_args)
        if training_args.vision_learning_rate is not None and model_args.training_mode != "full":
            raise ValueError(
                f"vision_learning_rate trains the vision tower: valid only with training_mode=full (got "
                f"{model_args.training_mode}, which freezes it)"
            )
    except ValueError as err:
        parser.error(str(err))
    return model_args, data_args, training_args
