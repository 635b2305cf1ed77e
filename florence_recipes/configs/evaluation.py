"""`EvaluationArguments` of `recipes/evaluate.py`, and the data options an evaluation refuses."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from accelerate.utils import parse_flag_from_env

from florence_recipes.configs.data import DataArguments
from florence_recipes.configs.training import FlorenceTrainingArguments
from florence_recipes.errors import RecipeError

# DataArguments that only concern training: refused when set, rather than silently ignored.
TRAINING_ONLY_DATA_OPTIONS = ("train_split", "max_train_samples", "mixture_stopping_strategy")


@dataclass
class EvaluationArguments:
    """Where evaluation results go and how answers are generated."""

    output_dir: str = field(
        metadata={"help": "Folder for predictions.jsonl, metrics.json, submission.json and report.html."}
    )
    per_device_eval_batch_size: int = field(default=16, metadata={"help": "Images per generate() call."})
    generation_max_length: int | None = field(
        default=None, metadata={"help": "Longest answer in tokens (default: --max_target_length)."}
    )
    generation_num_beams: int | None = field(
        default=None, metadata={"help": "Beam search width (default: the checkpoint's generation config)."}
    )
    dataloader_num_workers: int = field(
        default=2, metadata={"help": "DataLoader worker processes that decode images and run the processor."}
    )
    baseline_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A second checkpoint (e.g. the model before fine-tuning) evaluated on the same items: its "
            "results go to OUTPUT_DIR/baseline/ and comparison.html shows the answers that changed."
        },
    )
    gallery_size: int = field(
        default=200, metadata={"help": "Examples shown with thumbnails in the HTML reports (worst first)."}
    )

    def __post_init__(self) -> None:
        for name in ("per_device_eval_batch_size", "gallery_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.dataloader_num_workers < 0:
            raise ValueError(f"dataloader_num_workers must be >= 0, got {self.dataloader_num_workers}")

    def trainer_arguments(self, max_target_length: int) -> FlorenceTrainingArguments:
        """The Trainer arguments of an evaluation-only run (the launched processes are checked there too)."""
        return FlorenceTrainingArguments(
            output_dir=self.output_dir,
            do_train=False,
            do_eval=True,
            per_device_eval_batch_size=self.per_device_eval_batch_size,
            generation_max_length=self.generation_max_length or max_target_length,
            generation_num_beams=self.generation_num_beams,
            dataloader_num_workers=self.dataloader_num_workers,
            # As `Accelerator` does: `accelerate launch --cpu` (or the variable) keeps every process on the CPU.
            use_cpu=parse_flag_from_env("ACCELERATE_USE_CPU"),
            report_to="none",
        )


def reject_training_options(data_args: DataArguments) -> None:
    """One line for a training-only data option given to an evaluation, instead of ignoring it."""
    defaults = {f.name: f.default for f in dataclasses.fields(DataArguments)}
    given = [name for name in TRAINING_ONLY_DATA_OPTIONS if getattr(data_args, name) != defaults[name]]
    if given:
        raise RecipeError(
            f"{', '.join(given)}: training option(s) that an evaluation does not use; pick the evaluated split "
            "with --split (per mixture entry: eval_split) and cap it with --max_eval_samples"
        )
