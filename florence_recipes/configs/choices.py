"""The closed sets of values some arguments take, checked for YAML values too (argparse only checks the CLI)."""

from __future__ import annotations

TRAINING_MODES = ("full", "frozen_vision", "lora")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")
TORCH_DTYPES = ("auto", "float32", "bfloat16", "float16")
MIXTURE_STOPPING_STRATEGIES = ("first_exhausted", "all_exhausted")
FEATURE_CACHE_STORAGES = ("none", "memory", "disk")
CPU_BF16_CHOICES = ("auto", "true", "false")
NO_IMAGE_POLICIES = ("skip", "blank")  # rows without an image (florence_recipes.data.hub_tasks)
MULTI_IMAGE_POLICIES = (
    "skip",
    "first",
    "concat",
)  # rows with several images (florence_recipes.data.hub_tasks)
BAD_SAMPLE_POLICIES = ("raise", "skip")  # florence_recipes.data.validation
# How `dataset_name` is read (florence_recipes.data.formats): detected from the folder, another tool's layout, or
# anything `datasets.load_dataset` reads (your own rows, imagefolder, a Hub dataset).
DATASET_FORMATS = ("auto", "maestro", "coco", "llava", "datasets")


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    # argparse only checks `choices` for values typed on the command line, not for YAML defaults.
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of: {', '.join(choices)}")
