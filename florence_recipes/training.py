"""Pieces of a recipe's `main()` that every recipe shares: logging, pre-flight checks, checkpoints, saving."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers
from datasets import Dataset
from huggingface_hub import HfApi
from torch.utils.data import DataLoader, Sampler
from transformers import PreTrainedModel, ProcessorMixin, Seq2SeqTrainer
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import (
    PREFIX_CHECKPOINT_DIR,
    EvalLoopOutput,
    EvalPrediction,
)

from florence_recipes.collator import Florence2Collator
from florence_recipes.configs import FlorenceTrainingArguments, ModelArguments
from florence_recipes.data import column_values
from florence_recipes.errors import RecipeError, first_line
from florence_recipes.speed import (
    ImageFeatureCache,
    ImageGroupedSampler,
    build_feature_cache,
    feature_cache_dtype,
    length_sorted_order,
    merge_image_features,
    restore_dataset_order,
)

logger = logging.getLogger(__name__)


def run_recipe(main: Callable[[], None]) -> None:
    """Run a recipe's `main()`, reporting a `RecipeError` as one line instead of a traceback."""
    try:
        main()
    except RecipeError as err:
        sys.stderr.write(f"error: {err}\n")
        sys.exit(1)
    finally:
        # Tear the process group down explicitly: left to interpreter exit, gloo/NCCL threads can abort a
        # finished run ("terminate called without an active exception") and fail the whole launch.
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def setup_logging(training_args: FlorenceTrainingArguments) -> None:
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    # The recipe's own messages (parameter counts, dataset sizes, ...) on the main process; the libraries at
    # the level the user asked for (`log_level`, default: warnings only).
    recipe_level = logging.INFO if training_args.should_log else logging.WARNING
    for name in ("florence_recipes", "__main__"):
        logging.getLogger(name).setLevel(recipe_level)
    log_level = training_args.get_process_log_level()
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
        reason = first_line(err)
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
    """Checkpoint to resume from; refuses to silently train over an output_dir that holds checkpoints.

    `--resume_from_checkpoint true` takes the newest *complete* checkpoint: one cut off by a crash while it
    was being written is moved to `incomplete-checkpoints/` first (the Trainer would otherwise pick it, and
    would write into it again later). The main process goes first, so the others see the folder it left.
    """
    with training_args.main_process_first(local=training_args.save_on_each_node, desc="checking checkpoints"):
        return _resolve_checkpoint(training_args)


def _resolve_checkpoint(training_args: FlorenceTrainingArguments) -> str | None:
    output_dir = Path(training_args.output_dir)
    resume = training_args.resume_from_checkpoint
    checkpoints = _checkpoints(output_dir)
    if resume is not None and str(resume).lower() in ("true", "latest"):
        while checkpoints and not is_complete_checkpoint(checkpoints[-1]):
            _set_aside_incomplete(checkpoints.pop())
        if not checkpoints:
            raise RecipeError(
                f"--resume_from_checkpoint true: no complete checkpoint-* folder in {output_dir}"
            )
        return str(checkpoints[-1])
    if resume is not None:
        if not Path(resume).is_dir():
            raise RecipeError(f"--resume_from_checkpoint: {resume} is not a folder")
        if not is_complete_checkpoint(Path(resume)):
            raise RecipeError(
                f"--resume_from_checkpoint: {resume} has no readable {TRAINER_STATE_NAME}: it was cut off while "
                "being written; resume from an earlier checkpoint"
            )
        return str(resume)
    if checkpoints and training_args.do_train:
        if not training_args.overwrite_output_dir:
            raise RecipeError(
                f"{output_dir} already holds checkpoints (latest: {checkpoints[-1].name}); resume with "
                "--resume_from_checkpoint true, or start over with --overwrite_output_dir true "
                "(old checkpoints are moved aside, not deleted)"
            )
        _move_old_checkpoints(output_dir)
    return None


def _checkpoints(output_dir: Path) -> list[Path]:
    """`checkpoint-<step>` folders of `output_dir`, oldest step first."""
    if not output_dir.is_dir():
        return []
    steps = {
        path: int(path.name.rsplit("-", 1)[1])
        for path in output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*")
        if path.is_dir() and path.name.rsplit("-", 1)[1].isdigit()
    }
    return sorted(steps, key=steps.__getitem__)


def is_complete_checkpoint(checkpoint: Path) -> bool:
    """True if the Trainer finished writing `checkpoint`: it writes trainer_state.json last, after the
    weights, optimizer, scheduler and RNG states."""
    try:
        json.loads((checkpoint / TRAINER_STATE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def last_complete_checkpoint(output_dir: str | Path) -> str | None:
    complete = [path for path in _checkpoints(Path(output_dir)) if is_complete_checkpoint(path)]
    return str(complete[-1]) if complete else None


def _set_aside_incomplete(checkpoint: Path) -> None:
    archive = checkpoint.parent / "incomplete-checkpoints"
    archive.mkdir(exist_ok=True)
    target = archive / f"{checkpoint.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    shutil.move(str(checkpoint), target)
    logger.warning("%s was cut off while being written; moved it to %s (safe to delete)", checkpoint, target)


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
        self.feature_cache: ImageFeatureCache | None = None

    # --- speed switches (florence_recipes.speed); evaluation keeps the plain collator -------------------

    def prepare_feature_cache(self) -> ImageFeatureCache:
        """Image features of every unique training image (`feature_cache`), computed once per run or reused."""
        if self.feature_cache is None:
            args = self.args
            _require_map_style(self.train_dataset, f"feature_cache={args.feature_cache}")
            build = functools.partial(
                build_feature_cache,
                self.model,
                self.processing_class.image_processor,
                self.train_dataset,
                storage=args.feature_cache,
                dtype=feature_cache_dtype(args, self.model),
                device=args.device,
                cache_dir=args.feature_cache_dir,
                batch_size=args.per_device_eval_batch_size,
                num_workers=args.dataloader_num_workers,
                autocast=self.accelerator.autocast(),
            )
            if args.feature_cache == "disk":
                # One process writes the file, the others then find it complete and reuse it.
                with self.accelerator.main_process_first():
                    self.feature_cache = build()
            else:
                self.feature_cache = build()
        return self.feature_cache

    def _get_dataloader(self, *args: Any, is_training: bool = False, **kwargs: Any) -> DataLoader:
        with self._speed_collator(is_training):
            dataloader = super()._get_dataloader(*args, is_training=is_training, **kwargs)
        if is_training:
            # A DataLoader iterator draws its workers' base seed from the global RNG. Persistent workers draw it
            # once, when training starts; a resumed run draws it again at its first new epoch, which shifts the
            # global RNG (dropout) away from the uninterrupted run's. A generator of its own keeps the global
            # stream, restored from rng_state.pth, exactly as it would have been. (accelerate wraps the DataLoader.)
            loader = getattr(dataloader, "base_dataloader", dataloader)
            loader.generator = torch.Generator().manual_seed(self.args.seed)
        return dataloader

    def get_train_dataloader(self) -> DataLoader:
        if self.args.feature_cache == "none":
            return super().get_train_dataloader()
        self.prepare_feature_cache()
        return self._get_dataloader(
            dataset=self.train_dataset.remove_columns("image"),  # cached images are never decoded
            description="Training",
            batch_size=self._train_batch_size,
            sampler_fn=self._get_train_sampler,
            is_training=True,
        )

    @contextlib.contextmanager
    def _speed_collator(self, is_training: bool) -> Iterator[None]:
        """The batch layout the speed switches ask for (see Florence2Collator), evaluation batches included."""
        args = self.args
        if not (args.dedup_vision or (is_training and args.feature_cache != "none")):
            yield
            return
        if not isinstance(self.data_collator, Florence2Collator):
            raise RecipeError("dedup_vision / feature_cache need the Florence2Collator")
        plain_collator = self.data_collator
        if is_training and args.feature_cache != "none":
            self.data_collator = replace(plain_collator, feature_cache=self.feature_cache)
        else:
            self.data_collator = replace(plain_collator, dedup_images=True)
        try:
            yield
        finally:
            self.data_collator = plain_collator

    def _get_train_sampler(self, train_dataset: Dataset | None = None) -> Sampler | None:
        if not self.args.group_by_image:
            return super()._get_train_sampler(train_dataset)
        dataset = self.train_dataset if train_dataset is None else train_dataset
        _require_map_style(dataset, "group_by_image")
        seed = self.args.seed if self.args.data_seed is None else self.args.data_seed
        return ImageGroupedSampler(column_values(dataset, "image_id"), seed=seed)

    def _get_eval_sampler(self, eval_dataset: Dataset) -> Sampler | list[int] | None:
        order = self._eval_order(eval_dataset)
        return super()._get_eval_sampler(eval_dataset) if order is None else order

    def _eval_order(self, dataset: Any) -> list[int] | None:
        """group_eval_by_length: the order evaluation batches run in (standard rows only)."""
        if not self.args.group_eval_by_length or not isinstance(dataset, Dataset):
            return None
        if not {"prompt", "image_id"} <= set(dataset.column_names):
            return None
        return length_sorted_order(column_values(dataset, "prompt"), column_values(dataset, "image_id"))

    def _image_features(self, model: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        """Each question's image features from a speed-layout batch (pops the image keys from `inputs`)."""
        features = inputs.pop("image_features", None)
        if features is None:  # dedup_vision: the tower runs once per unique image of the batch
            with self.accelerator.autocast():
                unique = self.accelerator.unwrap_model(model).get_image_features(
                    pixel_values=inputs.pop("pixel_values")
                )
            features = unique.pooler_output[inputs.pop("image_index")]
        return features

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any], *args, **kwargs) -> Any:
        if "image_features" in inputs or "image_index" in inputs:
            inputs = dict(inputs)
            features = self._image_features(model, inputs)
            unwrapped = self.accelerator.unwrap_model(model)
            inputs["inputs_embeds"] = merge_image_features(unwrapped, inputs.pop("input_ids"), features)
        return super().compute_loss(model, inputs, *args, **kwargs)

    def prediction_step(
        self, model: torch.nn.Module, inputs: dict[str, Any], prediction_loss_only: bool, *args, **kwargs
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        if "image_index" not in inputs or not self.args.predict_with_generate or prediction_loss_only:
            return super().prediction_step(model, inputs, prediction_loss_only, *args, **kwargs)
        # dedup_vision: one vision pass per unique image serves generation and the loss alike (the plain
        # Seq2SeqTrainer step runs the tower for every question twice: in generate, then in the loss forward).
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            features = self._image_features(model, inputs)
        labels = inputs.pop("labels", None)
        encoded = {"image": BaseModelOutputWithPooling(pooler_output=features)}
        _, generated, _ = super().prediction_step(
            model, {**inputs, "mm_encoder_outputs": encoded}, False, *args, **kwargs
        )
        if labels is None:
            return None, generated, None
        embeddings = merge_image_features(self.accelerator.unwrap_model(model), inputs["input_ids"], features)
        with torch.no_grad(), self.compute_loss_context_manager():
            outputs = model(inputs_embeds=embeddings, attention_mask=inputs["attention_mask"], labels=labels)
        if labels.shape[-1] < generated.shape[-1]:  # as Seq2SeqTrainer pads them, to stack with predictions
            labels = self._pad_tensors_to_max_len(labels, generated.shape[-1])
        return outputs.loss.detach().mean(), generated, labels

    def evaluation_loop(self, dataloader: DataLoader, *args, **kwargs) -> EvalLoopOutput:
        # Seq2SeqTrainer.evaluate/predict gather with plain `accelerator.gather` (transformers#27025, written for
        # num_return_sequences > 1), which keeps the copies accelerate pads the last distributed batch with, so
        # N processes would score some examples twice. We generate one sequence per example, for which
        # `gather_for_metrics` drops exactly those copies.
        self.gather_function = functools.partial(
            self.accelerator.gather_for_metrics, use_gather_object=self.args.eval_use_gather_object
        )
        order = self._eval_order(dataloader.dataset)
        if order is None:
            return super().evaluation_loop(dataloader, *args, **kwargs)
        # Batches ran in length order (group_eval_by_length): score and return predictions in dataset order.
        compute_metrics = self.compute_metrics
        if compute_metrics is not None:
            self.compute_metrics = functools.partial(_score_in_dataset_order, compute_metrics, order)
        try:
            output = super().evaluation_loop(dataloader, *args, **kwargs)
        finally:
            self.compute_metrics = compute_metrics
        return output._replace(
            predictions=restore_dataset_order(output.predictions, order),
            label_ids=restore_dataset_order(output.label_ids, order),
        )

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


def _require_map_style(dataset: Any, option: str) -> None:
    if not isinstance(dataset, Dataset):
        raise RecipeError(f"{option} needs a map-style training dataset; turn it off with streaming: true")


def _score_in_dataset_order(
    compute_metrics: Callable[[EvalPrediction], dict[str, float]],
    order: list[int],
    prediction: EvalPrediction,
) -> dict[str, float]:
    return compute_metrics(
        EvalPrediction(
            predictions=restore_dataset_order(prediction.predictions, order),
            label_ids=restore_dataset_order(prediction.label_ids, order),
            inputs=restore_dataset_order(prediction.inputs, order),
            losses=restore_dataset_order(prediction.losses, order),
        )
    )


def save_final_model(
    trainer: Seq2SeqTrainer, processor: ProcessorMixin, model_args: ModelArguments, output_dir: str
) -> None:
    """Save model (+ generation config) and processor; LoRA adapters are merged first if asked."""
    model = trainer.model
    if model_args.training_mode == "lora" and model_args.merge_lora:
        from peft.utils.integrations import gather_params_ctx

        peft_model = trainer.accelerator.unwrap_model(model)
        # Under ZeRO-3 each process holds only a slice of every weight: gather them all (read-only, no-op
        # otherwise) so that the merge and the save see full weights, not empty placeholders.
        with gather_params_ctx(list(peft_model.parameters()), modifier_rank=None):
            merged: PreTrainedModel = peft_model.merge_and_unload()
            if trainer.args.should_save:
                merged.save_pretrained(output_dir)
                processor.save_pretrained(output_dir)
        return
    trainer.save_model(output_dir)  # also saves the processor (processing_class)
