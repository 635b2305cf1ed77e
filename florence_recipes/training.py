"""Pieces of a recipe's `main()` that every recipe shares: logging, pre-flight checks, checkpoints, saving."""

from __future__ import annotations

import logging
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import datasets
import transformers
from huggingface_hub import HfApi
from transformers import PreTrainedModel, ProcessorMixin, Seq2SeqTrainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from florence_recipes.configs import FlorenceTrainingArguments, ModelArguments
from florence_recipes.errors import RecipeError

logger = logging.getLogger(__name__)


def run_recipe(main: Callable[[], None]) -> None:
    """Run a recipe's `main()`, reporting a `RecipeError` as one line instead of a traceback."""
    try:
        main()
    except RecipeError as err:
        sys.stderr.write(f"error: {err}\n")
        sys.exit(1)


def setup_logging(training_args: FlorenceTrainingArguments) -> None:
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    log_level = training_args.get_process_log_level()
    logging.getLogger("florence_recipes").setLevel(log_level)
    logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()


def check_hub_access(training_args: FlorenceTrainingArguments) -> None:
    """With --push_to_hub, fail now — not after a night of training — if the Hub or write access is missing."""
    if not training_args.push_to_hub:
        return
    repo_id = training_args.hub_model_id or Path(training_args.output_dir).name
    try:
        identity = HfApi().whoami(token=training_args.hub_token)
    except Exception as err:  # offline mode, network error, missing or invalid token
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RecipeError(
            f"--push_to_hub: cannot authenticate with the Hugging Face Hub ({reason}); "
            "run `hf auth login` or set HF_TOKEN, or drop --push_to_hub"
        ) from None
    role = identity.get("auth", {}).get("accessToken", {}).get("role")
    if role == "read":
        raise RecipeError(
            f"--push_to_hub: the Hub token is read-only; {repo_id} needs a token with write access"
        )
    namespace = repo_id.split("/")[0] if "/" in repo_id else identity["name"]
    writable = {identity["name"]} | {
        org["name"]
        for org in identity.get("orgs", [])
        if org.get("roleInOrg", "write") in ("write", "admin", None)
    }
    if namespace not in writable:
        raise RecipeError(
            f"--push_to_hub: {identity['name']} cannot write to namespace {namespace!r} "
            f"(writable: {', '.join(sorted(writable))}); set --hub_model_id"
        )
    logger.info("Hub access checked: will push to %s as %s", repo_id, identity["name"])


def resolve_checkpoint(training_args: FlorenceTrainingArguments) -> str | None:
    """Checkpoint to resume from; refuses to silently train over an output_dir that holds checkpoints."""
    output_dir = Path(training_args.output_dir)
    resume = training_args.resume_from_checkpoint
    last = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
    if resume is not None and str(resume).lower() in ("true", "latest"):
        if last is None:
            raise RecipeError(f"--resume_from_checkpoint true: no checkpoint-* folder in {output_dir}")
        return last
    if resume is not None:
        if not Path(resume).is_dir():
            raise RecipeError(f"--resume_from_checkpoint: {resume} is not a folder")
        return str(resume)
    if last is not None and training_args.do_train:
        if not training_args.overwrite_output_dir:
            raise RecipeError(
                f"{output_dir} already holds checkpoints (latest: {Path(last).name}); resume with "
                "--resume_from_checkpoint true, or start over with --overwrite_output_dir true "
                "(old checkpoints are moved aside, not deleted)"
            )
        _move_old_checkpoints(output_dir)
    return None


def _move_old_checkpoints(output_dir: Path) -> None:
    # Keep the user's previous run: the Trainer's checkpoint rotation would otherwise delete it.
    archive = output_dir / f"previous-run-{time.strftime('%Y%m%d-%H%M%S')}"
    archive.mkdir()
    for checkpoint in output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        shutil.move(str(checkpoint), archive / checkpoint.name)
    logger.warning("--overwrite_output_dir: moved existing checkpoints to %s", archive)


MODEL_CARD_USAGE = """## How to use

```python
from transformers import AutoModelForImageTextToText, AutoProcessor

model = AutoModelForImageTextToText.from_pretrained("{repo}")
processor = AutoProcessor.from_pretrained("{repo}")
inputs = processor(text="{prompt}", images=image, return_tensors="pt")
ids = model.generate(**inputs, max_new_tokens={max_tokens}, num_beams={num_beams})
print(processor.batch_decode(ids, skip_special_tokens=True)[0])
```

Trained with florence-recipes (`training_mode: {mode}`,
task `{task}`): native transformers Florence-2 classes, no `trust_remote_code`.
"""


class FlorenceTrainer(Seq2SeqTrainer):
    """`Seq2SeqTrainer` whose model card also says how to prompt and run the fine-tuned model."""

    def __init__(self, *args, card_usage: dict[str, str] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.card_usage = card_usage

    def create_model_card(self, *args, **kwargs) -> None:
        super().create_model_card(*args, **kwargs)
        card = Path(self.args.output_dir) / "README.md"
        if self.card_usage is None or not self.is_world_process_zero() or not card.is_file():
            return
        usage = MODEL_CARD_USAGE.format(
            repo=self.args.hub_model_id or self.args.output_dir,
            max_tokens=self.args.generation_max_length,
            num_beams=self.args.generation_num_beams or 1,
            **self.card_usage,
        )
        text = card.read_text(encoding="utf-8")
        card.write_text(
            text.replace("## Model description\n\nMore information needed\n", usage), encoding="utf-8"
        )


def save_final_model(
    trainer: Seq2SeqTrainer, processor: ProcessorMixin, model_args: ModelArguments, output_dir: str
) -> None:
    """Save model (+ generation config) and processor; LoRA adapters are merged first if asked."""
    model = trainer.model
    if model_args.training_mode == "lora" and model_args.merge_lora:
        merged: PreTrainedModel = trainer.accelerator.unwrap_model(model).merge_and_unload()
        if trainer.args.should_save:
            merged.save_pretrained(output_dir)
            processor.save_pretrained(output_dir)
        return
    trainer.save_model(output_dir)  # also saves the processor (processing_class)
