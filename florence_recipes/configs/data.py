"""`DataArguments`: which dataset to train and evaluate on, and how its rows become prompts and targets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from florence_recipes.configs.choices import (
    BAD_SAMPLE_POLICIES,
    DATASET_FORMATS,
    MIXTURE_STOPPING_STRATEGIES,
    MULTI_IMAGE_POLICIES,
    NO_IMAGE_POLICIES,
    check_choice,
)


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
    dataset_format: str = field(
        default="auto",
        metadata={
            "help": "Layout of dataset_name: auto (detected from the folder), maestro (Roboflow Florence-2 "
            "annotations.jsonl), coco (Roboflow _annotations.coco.json or annotations/instances_<split>.json), "
            "llava (conversations JSON/JSONL), or datasets (what datasets.load_dataset reads). A format implies "
            "its task (docs/formats.md).",
            "choices": DATASET_FORMATS,
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
    # Set by `parse_recipe_args`: whether `--task` was typed on the command line (not only in the YAML). A dataset
    # format implies its task; only a task the user typed for this very run may contradict it (an error).
    task_on_command_line: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.dataset_mixture, str):  # from the command line; a YAML file gives the list itself
            try:
                self.dataset_mixture = yaml.safe_load(self.dataset_mixture)
            except yaml.YAMLError as err:
                raise ValueError(
                    f"dataset_mixture: not valid JSON/YAML ({str(err).splitlines()[0]})"
                ) from None
        check_choice("mixture_stopping_strategy", self.mixture_stopping_strategy, MIXTURE_STOPPING_STRATEGIES)
        check_choice("no_image_policy", self.no_image_policy, NO_IMAGE_POLICIES)
        check_choice("multi_image_policy", self.multi_image_policy, MULTI_IMAGE_POLICIES)
        check_choice("on_bad_sample", self.on_bad_sample, BAD_SAMPLE_POLICIES)
        check_choice("dataset_format", self.dataset_format, DATASET_FORMATS)
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
