"""Fine-tune Florence-2 on DocVQA with transformers' Seq2SeqTrainer, scored with ANLS.

Offline smoke run (tiny random Florence-2 + synthetic documents, 2 CPU cores, under a minute):

    accelerate launch recipes/docvqa.py --config recipes/docvqa/smoke.yaml

Florence-2-base, full fine-tune, one GPU:

    accelerate launch --config_file accelerate_configs/single_gpu.yaml recipes/docvqa.py \
        --config recipes/docvqa/base_full.yaml

Every key of the YAML can be overridden on the command line, e.g. `--learning_rate 5e-6 --output_dir out`.
The task comes from the YAML (`task:` or `dataset_mixture:`), so `recipes/cauldron.py` and `recipes/custom.py`
run this same `main()` for Cauldron subsets, mixtures and your own data.
"""

from __future__ import annotations

import logging

from transformers import set_seed

from florence_recipes.budget import report_budget
from florence_recipes.builders import build_offline_fixtures
from florence_recipes.callbacks import NonFiniteLossGuard
from florence_recipes.collator import Florence2Collator
from florence_recipes.configs import parse_recipe_args
from florence_recipes.data import data_sources, load_eval_dataset, load_train_dataset
from florence_recipes.errors import RecipeError
from florence_recipes.modeling import apply_training_mode, load_model, load_processor, set_generation_length
from florence_recipes.plots import TrainingCurvesCallback
from florence_recipes.scoring import build_eval_metrics
from florence_recipes.training import (
    FlorenceTrainer,
    check_hub_access,
    last_complete_checkpoint,
    resolve_checkpoint,
    run_recipe,
    save_final_model,
    setup_logging,
)
from florence_recipes.validation import bad_sample_metrics, check_samples, count_truncated_targets

logger = logging.getLogger(__name__)


def main() -> None:
    model_args, data_args, training_args = parse_recipe_args()

    ###############
    # Setup logging
    ###############
    setup_logging(training_args)
    logger.info("Model parameters %s", model_args)
    logger.info("Data parameters %s", data_args)
    logger.info("Training/evaluation parameters %s", training_args)

    ###################################################
    # Pre-flight checks: fail before any model is loaded
    ###################################################
    sources = data_sources(data_args, training_args)  # one dataset, or the entries of dataset_mixture
    task = sources[0].task  # for the model card's usage example
    check_hub_access(training_args)
    last_checkpoint = resolve_checkpoint(training_args)
    if last_checkpoint is not None:
        logger.info("Resuming training from %s", last_checkpoint)
    if data_args.build_offline_fixtures:
        with training_args.main_process_first(desc="building offline fixtures"):
            for source in sources:
                build_offline_fixtures(model_args.model_name_or_path, source.dataset, source.task.name)
    if report_budget(model_args, data_args, training_args, sources):  # steps, samples, H100-hours
        return  # --budget_only true
    set_seed(training_args.seed)

    ##############
    # Load dataset
    ##############
    with training_args.main_process_first(desc="dataset standardisation"):
        train_dataset = (
            load_train_dataset(sources, data_args, training_args.seed) if training_args.do_train else None
        )
        eval_dataset = load_eval_dataset(sources, data_args) if training_args.do_eval else None
        # Bad samples fail (or are dropped and counted) now, not hours into training.
        where = "split of " + ", ".join(dict.fromkeys(source.dataset for source in sources))
        policy, num_proc = data_args.on_bad_sample, data_args.preprocessing_num_workers
        bad_samples = {}
        if train_dataset is not None:
            train_dataset, bad_samples["train"] = check_samples(
                train_dataset, policy, f"train {where}", num_proc=num_proc
            )
        if eval_dataset is not None:
            eval_dataset, bad_samples["eval"] = check_samples(
                eval_dataset, policy, f"eval {where}", num_proc=num_proc
            )
    for name, dataset in (("train", train_dataset), ("eval", eval_dataset)):
        if dataset is not None:
            logger.info("%s examples: %s", name, len(dataset) if hasattr(dataset, "__len__") else "streamed")

    ##################################
    # Load processor and model
    ##################################
    processor = load_processor(model_args)
    truncated_targets = None
    if train_dataset is not None and bad_samples["train"] is not None:  # not for a stream: no length
        truncated_targets = count_truncated_targets(
            train_dataset, processor.tokenizer, data_args.max_target_length, where=f"train {where}"
        )
    model = load_model(model_args)
    if training_args.generation_max_length is None:
        training_args.generation_max_length = data_args.max_target_length
    set_generation_length(model, training_args.generation_max_length)
    model = apply_training_mode(model, model_args)

    ########################
    # Initialize the Trainer
    ########################
    nonfinite_guard = NonFiniteLossGuard(training_args.nonfinite_loss_patience)
    compute_metrics = None
    if eval_dataset is not None and training_args.predict_with_generate:
        # Per-source metrics (eval_<source>_<metric>) for mixtures; mAP for detection / grounding.
        compute_metrics = build_eval_metrics(processor, eval_dataset, sources)
    trainer = FlorenceTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=Florence2Collator(processor, max_target_length=data_args.max_target_length),
        processing_class=processor,
        compute_metrics=compute_metrics,
        callbacks=[nonfinite_guard, TrainingCurvesCallback()],  # + training_curves.png
        card_usage={
            "prompt": task.example_prompt,
            "mode": model_args.training_mode,
            "task": task.name,
        },
    )

    ###############
    # Training loop
    ###############
    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=last_checkpoint)
        if nonfinite_guard.failure is not None:
            last_good = last_complete_checkpoint(training_args.output_dir) or "none yet"
            raise RecipeError(
                f"{nonfinite_guard.failure}; last good checkpoint: {last_good}. Lower learning_rate, prefer bf16 "
                "to fp16 or check the data, then resume with --resume_from_checkpoint true"
            )
        metrics = train_result.metrics
        if bad_samples["train"] is not None:
            metrics |= bad_sample_metrics(bad_samples["train"], prefix="train_")
            metrics["train_targets_truncated"] = truncated_targets
        if hasattr(train_dataset, "__len__"):  # a streamed dataset has none
            metrics["train_samples"] = len(train_dataset)
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()

    ##########
    # Evaluate
    ##########
    if training_args.do_eval:
        logger.info("*** Evaluate ***")
        metrics = trainer.evaluate(metric_key_prefix="eval")
        metrics["eval_samples"] = len(eval_dataset)
        if bad_samples["eval"] is not None:
            metrics |= bad_sample_metrics(bad_samples["eval"], prefix="eval_")
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)

    ##################################
    # Save model and create model card
    ##################################
    # Generation after loading wants the KV cache, which gradient checkpointing switches off in the config.
    trainer.accelerator.unwrap_model(trainer.model).config.use_cache = True
    save_final_model(trainer, processor, model_args, training_args.output_dir)
    card_kwargs = {
        "model_name": training_args.hub_model_id or training_args.output_dir.rstrip("/").split("/")[-1],
        "finetuned_from": model_args.model_name_or_path,
        "dataset": list(dict.fromkeys(source.dataset for source in sources)),
        "tasks": "image-text-to-text",
        "tags": ["florence-2", "florence-recipes", *dict.fromkeys(source.task.name for source in sources)],
    }
    if trainer.is_world_process_zero():
        trainer.create_model_card(**card_kwargs)

    if training_args.push_to_hub:
        logger.info("Pushing to the Hub")
        trainer.push_to_hub(**card_kwargs)
    logger.info("*** Done: %s ***", training_args.output_dir)


if __name__ == "__main__":
    run_recipe(main)
