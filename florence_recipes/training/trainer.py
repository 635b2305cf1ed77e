"""`FlorenceTrainer`: `Seq2SeqTrainer` that wires what a Florence-2 recipe never wants to wire by hand.

It builds the data collator, the scorer (`compute_metrics`), the non-finite-loss guard and the training-curves
callback from the run's arguments, runs the speed switches of `florence_recipes.speed` (image-grouped
sampling, one vision pass per unique image, the frozen-vision feature cache, length-grouped evaluation), gives
the vision tower its own learning rate if asked, and writes the model card's usage section and the final model
(LoRA merged if asked).

It uses the Trainer's public extension points (`create_optimizer`, `get_train_dataloader`, `compute_loss`,
`prediction_step`, `evaluation_loop`, `train`, `create_model_card`) and a few private hooks: `_get_train_sampler`, the
only way to give the Trainer's own DataLoader a sampler; `_save_rng_state`, the last write of every process into a
checkpoint, after which a barrier lets the main process write the completion marker; and `_save_checkpoint`, to
report a full disk in one line (docs/faults.md). `PRIVATE_TRAINER_HOOKS` lists them with the private helpers they
call, and `tests/test_code_layout.py` fails, naming the hook, when transformers changes them.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from torch.utils.data import DataLoader, Sampler
from transformers import PreTrainedModel, ProcessorMixin, Seq2SeqTrainer
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, EvalLoopOutput

from florence_recipes.configs.training import FlorenceTrainingArguments
from florence_recipes.data.collator import Florence2Collator
from florence_recipes.data.loading import column_values
from florence_recipes.data.sources import DataSource
from florence_recipes.data.validation import DroppedItem
from florence_recipes.errors import RecipeError
from florence_recipes.evaluation.scoring import Scorer, build_scorer
from florence_recipes.models.provenance import SourceRecord, TrainingRecord, observed_format, write_record
from florence_recipes.training.callbacks import SAVED_ON_SIGNAL_EXIT_CODE, NonFiniteLossGuard, SaveOnSignal
from florence_recipes.training.checkpoints import last_complete_checkpoint, out_of_space_error, sync_to_disk
from florence_recipes.training.curves import TrainingCurvesCallback
from florence_recipes.training.model_card import add_usage, usage_section
from florence_recipes.training.speed import (
    ImageFeatureCache,
    ImageGroupedSampler,
    build_feature_cache,
    feature_cache_dtype,
    length_sorted_order,
    merge_image_features,
    restore_dataset_order,
)

logger = logging.getLogger(__name__)

# Private members of transformers' (Seq2Seq)Trainer this class relies on: overridden, or called from
# `prediction_step`. Checked by tests/test_code_layout.py against the installed transformers.
PRIVATE_TRAINER_HOOKS = (
    "_get_train_sampler",
    "_prepare_inputs",
    "_pad_tensors_to_max_len",
    "_save_checkpoint",
    "_save_rng_state",
    "_get_output_dir",
)
# Set by recipes/launch.slurm: the main process writes SAVED_ON_SIGNAL_EXIT_CODE into this file when it stops
# on a signal, since the launchers (accelerate, torchrun) report any failed worker as exit code 1.
EXIT_CODE_FILE_ENV = "FLORENCE_EXIT_CODE_FILE"


class FlorenceTrainer(Seq2SeqTrainer):
    """`Seq2SeqTrainer` for Florence-2 recipes; see the module docstring.

    `sources` are the run's data sources (`florence_recipes.data.data_sources`): they decide how the eval set is
    scored. `max_target_length` caps the tokenised targets; `training_mode` goes into the model card and the
    training record. `eval_dropped` are the eval items `check_samples` dropped: the scorer counts them as 0.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        args: FlorenceTrainingArguments,
        processor: ProcessorMixin,
        sources: list[DataSource],
        train_dataset: Any = None,
        eval_dataset: Dataset | None = None,
        max_target_length: int = 128,
        training_mode: str = "full",
        callbacks: list[Any] | None = None,
        eval_dropped: list[DroppedItem] | None = None,
    ) -> None:
        self.eval_order = None
        if eval_dataset is not None and args.group_eval_by_length:
            # Evaluation runs in length order (less padding in batched generation); `predict_items` gives the
            # predictions back in dataset order, and metrics do not depend on the order.
            self.eval_order = length_sorted_order(
                column_values(eval_dataset, "prompt"), column_values(eval_dataset, "image_id")
            )
            eval_dataset = eval_dataset.select(self.eval_order)
        self.scorer: Scorer | None = None
        if eval_dataset is not None and args.predict_with_generate:
            self.scorer = build_scorer(processor, eval_dataset, sources, dropped=eval_dropped or ())
        self.nonfinite_guard = NonFiniteLossGuard(args.nonfinite_loss_patience)
        signals = [name for name in args.save_on_signal.split(",") if name]
        self.save_on_signal = SaveOnSignal(signals) if signals else None
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            # One collator for training and evaluation (its layout follows `dedup_vision` and the rows).
            data_collator=Florence2Collator(
                processor, max_target_length=max_target_length, dedup_images=args.dedup_vision
            ),
            processing_class=processor,
            compute_metrics=self.scorer,
            # The guard after SaveOnSignal: its veto keeps a save on a signal from storing NaN steps.
            callbacks=[
                *([self.save_on_signal] if self.save_on_signal else []),
                self.nonfinite_guard,
                TrainingCurvesCallback(),
                *(callbacks or []),
            ],
        )
        self.sources = sources
        self.training_mode = training_mode
        self.max_target_length = max_target_length
        self.record = self._training_record(train_dataset if train_dataset is not None else eval_dataset)
        self.feature_cache: ImageFeatureCache | None = None

    # --- training --------------------------------------------------------------------------------------

    def train(self, *args: Any, **kwargs: Any) -> Any:
        try:
            result = super().train(*args, **kwargs)
        finally:
            if self.save_on_signal is not None:
                self.save_on_signal.release()
        if self.nonfinite_guard.failure is not None:
            last_good = last_complete_checkpoint(self.args.output_dir) or "none yet"
            raise RecipeError(
                f"{self.nonfinite_guard.failure}; last good checkpoint: {last_good}. Lower learning_rate, prefer "
                "bf16 to fp16 or check the data, then resume with --resume_from_checkpoint true"
            )
        return result

    def exit_if_stopped_by_signal(self) -> None:
        """After `train()`: if a signal stopped it, log one line and exit with `SAVED_ON_SIGNAL_EXIT_CODE` (the
        checkpoint is saved; evaluation and the final model are left to the resumed run)."""
        if self.save_on_signal is None or self.save_on_signal.saved_step is None:
            return
        checkpoint = Path(self.args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{self.save_on_signal.saved_step}"
        if self.is_world_process_zero():
            logger.warning(self.save_on_signal.summary(str(checkpoint)))
            if exit_code_file := os.environ.get(EXIT_CODE_FILE_ENV):
                Path(exit_code_file).write_text(f"{SAVED_ON_SIGNAL_EXIT_CODE}\n")
        # No process exits before the main one has written the checkpoint's marker: a launcher that sees one
        # process exit (srun --kill-on-bad-exit, torchrun) kills the others.
        self.accelerator.wait_for_everyone()
        sys.exit(SAVED_ON_SIGNAL_EXIT_CODE)

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        """The Trainer's optimizer; with `vision_learning_rate`, the vision tower's parameters move to param
        groups of their own at that peak rate (the scheduler scales every group's rate by the same factor)."""
        if self.optimizer is not None or self.args.vision_learning_rate is None:
            return super().create_optimizer(model)
        optimizer = super().create_optimizer(model)
        opt_model = self.model if model is None else model
        tower = {id(p) for n, p in opt_model.named_parameters() if ".vision_tower." in f".{n}"}
        groups = [
            {**group, "params": params, "lr": self.args.vision_learning_rate if in_tower else group["lr"]}
            for group in optimizer.param_groups
            for in_tower in (False, True)
            if (params := [p for p in group["params"] if (id(p) in tower) == in_tower])
        ]
        optimizer.param_groups.clear()  # no step taken yet, so there is no optimizer state to move
        for group in groups:
            optimizer.add_param_group(group)
        return optimizer

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

    def get_train_dataloader(self) -> DataLoader:
        if self.args.feature_cache != "none" and self.data_collator.feature_cache is None:
            # Cached images are never decoded: the collator looks up the features of rows without an image.
            self.data_collator.feature_cache = self.prepare_feature_cache()
            self.train_dataset = self.train_dataset.remove_columns("image")
        dataloader = super().get_train_dataloader()
        # A DataLoader iterator draws its workers' base seed from the global RNG. Persistent workers draw it
        # once, when training starts; a resumed run draws it again at its first new epoch, which shifts the
        # global RNG (dropout) away from the uninterrupted run's. A generator of its own keeps the global
        # stream, restored from rng_state.pth, exactly as it would have been. (accelerate wraps the DataLoader.)
        loader = getattr(dataloader, "base_dataloader", dataloader)
        loader.generator = torch.Generator().manual_seed(self.args.seed)
        return dataloader

    def _get_train_sampler(self, train_dataset: Dataset | None = None) -> Sampler | None:
        if not self.args.group_by_image:
            return super()._get_train_sampler(train_dataset)
        dataset = self.train_dataset if train_dataset is None else train_dataset
        _require_map_style(dataset, "group_by_image")
        seed = self.args.seed if self.args.data_seed is None else self.args.data_seed
        return ImageGroupedSampler(column_values(dataset, "image_id"), seed=seed)

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

    # --- evaluation -------------------------------------------------------------------------------------

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
        return super().evaluation_loop(dataloader, *args, **kwargs)

    def predict_items(
        self, metric_key_prefix: str = "eval"
    ) -> tuple[list[str], list[dict[str, float] | None], dict[str, float]]:
        """Generate for the eval set: each item's decoded text and scores, in the eval set's original order, and
        the metrics, exactly as `evaluate()` reports them (same generation, same scorer, same key prefix)."""
        if self.scorer is None:
            raise RecipeError("predicting the eval set needs an eval_dataset and predict_with_generate=true")
        output = self.predict(self.eval_dataset, metric_key_prefix=metric_key_prefix)
        texts = self.scorer.decode(output.predictions)
        return *self._in_dataset_order(texts, self.scorer.score(texts).items), output.metrics

    def last_eval_items(self) -> tuple[list[str], list[dict[str, float] | None]] | None:
        """The last scored evaluation's texts and item scores, in the eval set's original order (None before
        one): what the recipe writes its evaluation files from, without generating twice."""
        if self.scorer is None or self.scorer.last is None:
            return None
        return self._in_dataset_order(*self.scorer.last)

    def _in_dataset_order(
        self, texts: list[str], items: list[dict[str, float] | None]
    ) -> tuple[list[str], list[dict[str, float] | None]]:
        if self.eval_order is None:
            return texts, items
        return restore_dataset_order(texts, self.eval_order), restore_dataset_order(items, self.eval_order)

    # --- saving -----------------------------------------------------------------------------------------

    def _training_record(self, dataset: Any) -> TrainingRecord:
        """What `florence_recipes.json` says: per source its task and the prompt format its rows really use
        (read from a map-style dataset's prompts; a stream is assumed to follow its task's format)."""
        prompts: dict[str, list[str]] = {}
        if isinstance(dataset, Dataset):
            for source, prompt in zip(
                column_values(dataset, "source"), column_values(dataset, "prompt"), strict=True
            ):
                prompts.setdefault(source, []).append(prompt)
        sources = tuple(
            SourceRecord(
                name=source.name,
                task=source.task.name,
                prompt_format=observed_format(source.task, prompts.get(source.name, [])),
                dataset=source.dataset,
                config=source.config,
            )
            for source in self.sources
        )
        return TrainingRecord(
            sources=sources,
            max_target_length=self.max_target_length,
            generation_max_length=self.args.generation_max_length,
            generation_num_beams=self.args.generation_num_beams,
            training_mode=self.training_mode,
        )

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        """The Trainer's checkpoint; a full disk stops the run with one line naming the folder and the space it
        needs (the previous checkpoint is kept: rotation only runs after a save completes)."""
        try:
            super()._save_checkpoint(model, trial)
        except Exception as err:
            run_dir = Path(self._get_output_dir(trial=trial))
            checkpoint = run_dir / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            previous = last_complete_checkpoint(run_dir)  # the new one never got its marker
            # ds_numel: a ZeRO-3 parameter's full size (numel() is this process's slice, often 0)
            params = self.accelerator.unwrap_model(model).parameters()
            weights = sum(getattr(p, "ds_numel", p.numel()) * p.element_size() for p in params)
            if (full_disk := out_of_space_error(err, checkpoint, previous, weights)) is not None:
                raise full_disk from err
            raise

    def _save_rng_state(self, output_dir: str) -> None:
        # The last file every process writes into a checkpoint. The main process writes trainer_state.json, the
        # checkpoint's completion marker, right after this returns: only once all files are on disk.
        super()._save_rng_state(output_dir)
        sync_to_disk(output_dir)
        self.accelerator.wait_for_everyone()

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save as the Trainer does, plus the training record (checkpoints, the final model, Hub pushes)."""
        super().save_model(output_dir, _internal_call=_internal_call)
        if self.args.should_save:
            write_record(output_dir or self.args.output_dir, self.record)

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        super().create_model_card(*args, **kwargs)
        card = Path(self.args.output_dir) / "README.md"
        if not self.is_world_process_zero() or not card.is_file():
            return
        task = self.sources[0].task
        usage = usage_section(
            repo=self.args.hub_model_id or self.args.output_dir,
            prompt=task.example_prompt,
            record=self.record,
            max_tokens=self.args.generation_max_length,
            num_beams=self.args.generation_num_beams or 1,
            box_task=task.box_task,
        )
        add_usage(card, usage)

    def save_final_model(self, output_dir: str, merge_lora: bool = False) -> None:
        """Save model (+ generation config) and processor; with `merge_lora`, LoRA adapters are merged first."""
        # Generation after loading wants the KV cache, which gradient checkpointing switches off in the config.
        self.accelerator.unwrap_model(self.model).config.use_cache = True
        if not merge_lora:
            self.save_model(output_dir)  # also saves the processor (processing_class)
            return
        from peft.utils.integrations import gather_params_ctx

        peft_model = self.accelerator.unwrap_model(self.model)
        # Under ZeRO-3 each process holds only a slice of every weight: gather them all (read-only, no-op
        # otherwise) so that the merge and the save see full weights, not empty placeholders.
        with gather_params_ctx(list(peft_model.parameters()), modifier_rank=None):
            merged: PreTrainedModel = peft_model.merge_and_unload()
            if self.args.should_save:
                merged.save_pretrained(output_dir)
                self.processing_class.save_pretrained(output_dir)
                write_record(output_dir, self.record)


def _require_map_style(dataset: Any, option: str) -> None:
    if not isinstance(dataset, Dataset):
        raise RecipeError(f"{option} needs a map-style training dataset; turn it off with streaming: true")
