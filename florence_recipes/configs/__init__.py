"""Layer 1, configs: the recipes' typed arguments and the YAML + command-line parser.

Owns `ModelArguments`, `DataArguments`, `FlorenceTrainingArguments` (transformers' `Seq2SeqTrainingArguments`
with the recipe's defaults), `EvaluationArguments` and `RecipeArgumentParser`. Imports nothing of the package
but `florence_recipes.errors`, and no torch, PIL or datasets of its own: parsing a recipe's arguments must stay
fast and fail before anything heavy is loaded.

This package's face gathers the public names, so `from florence_recipes.configs import ModelArguments` works
as it did when `configs` was one module.
"""

from florence_recipes.configs.choices import (
    ATTN_IMPLEMENTATIONS,
    BAD_SAMPLE_POLICIES,
    CPU_BF16_CHOICES,
    DATASET_FORMATS,
    FEATURE_CACHE_STORAGES,
    MIXTURE_STOPPING_STRATEGIES,
    MULTI_IMAGE_POLICIES,
    NO_IMAGE_POLICIES,
    TORCH_DTYPES,
    TRAINING_MODES,
)
from florence_recipes.configs.data import DataArguments
from florence_recipes.configs.evaluation import EvaluationArguments
from florence_recipes.configs.model import ModelArguments
from florence_recipes.configs.parser import (
    RecipeArgumentParser,
    given_options,
    parse_evaluation_args,
    parse_recipe_args,
)
from florence_recipes.configs.training import (
    FlorenceTrainingArguments,
    check_precision,
    cpu_bf16_wanted,
    cpu_has_native_bf16,
    runs_on_cpu,
)

__all__ = [
    "ATTN_IMPLEMENTATIONS",
    "BAD_SAMPLE_POLICIES",
    "CPU_BF16_CHOICES",
    "DATASET_FORMATS",
    "FEATURE_CACHE_STORAGES",
    "MIXTURE_STOPPING_STRATEGIES",
    "MULTI_IMAGE_POLICIES",
    "NO_IMAGE_POLICIES",
    "TORCH_DTYPES",
    "TRAINING_MODES",
    "DataArguments",
    "EvaluationArguments",
    "FlorenceTrainingArguments",
    "ModelArguments",
    "RecipeArgumentParser",
    "check_precision",
    "cpu_bf16_wanted",
    "cpu_has_native_bf16",
    "given_options",
    "parse_evaluation_args",
    "parse_recipe_args",
    "runs_on_cpu",
]
