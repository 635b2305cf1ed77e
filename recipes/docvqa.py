"""Fine-tune Florence-2 on DocVQA with transformers' Seq2SeqTrainer, scored with ANLS.

Offline smoke run (tiny random Florence-2 + synthetic documents, 2 CPU cores, a few minutes):

    accelerate launch recipes/docvqa.py --config recipes/docvqa/smoke.yaml

Florence-2-base, full fine-tune, one GPU:

    accelerate launch --config_file accelerate_configs/single_gpu.yaml recipes/docvqa.py \
        --config recipes/docvqa/base_full.yaml

Every key of the YAML can be overridden on the command line, e.g. `--learning_rate 5e-6 --output_dir out`.
"""

from __future__ import annotations

import logging

from transformers import set_seed

from florence_recipes.builders import build_offline_fixtures
from florence_recipes.collator import Florence2Collator
from florence_recipes.configs import parse_recipe_args
from florence_recipes.data import column_values, get_task, load_task_split
from florence_recipes.metrics import build_compute_metrics
from florence_recipes.modeling import apply_training_mode, load_model, load_processor, set_generation_length
from florence_recipes.training import (
    FlorenceTrainer,
    check_hub_access,
    resolve_checkpoint,
    run_recipe,
    save_final_model,
    setup_logging,
)

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
    task = get_task(data_args.task)
    check_hub_access(training_args)
    last_checkpoint = resolve_checkpoint(training_args)
    if last_checkpoint is not None:
        logger.info("Resuming training from %s", last_checkpoint)
    if data_args.build_offline_fixtures:
        with training_args.main_process_first(desc="building offline fixtures"):
            build_offline_fixtures(model_args.model_name_or_path, data_args.dataset_name, task.name)
    set_seed(training_args.seed)

    ##############
    # Load dataset
    ##############
    def load_split(split: str, max_samples: int | None):
        return load_task_split(
            task,
            data_args.dataset_name,
            split,
            dataset_config=data_args.dataset_config,
            max_samples=max_samples,
            num_proc=data_args.preprocessing_num_workers,
        )

    with training_args.main_process_first(desc="dataset standardisation"):
        train_dataset = (
            load_split(data_args.train_split, data_args.max_train_samples) if training_args.do_train else None
        )
        eval_dataset = (
            load_split(data_args.eval_split, data_args.max_eval_samples) if training_args.do_eval else None
        )
    for name, dataset in (("train", train_dataset), ("eval", eval_dataset)):
        if dataset is not None:
            logger.info("%s examples: %d", name, len(dataset))

    ##################################
    # Load processor and model
    ##################################
    processor = load_processor(model_args)
    model = load_model(model_args)
    if training_args.generation_max_length is None:
        training_args.generation_max_length = data_args.max_target_length
    set_generation_length(model, training_args.generation_max_length)
    model = apply_training_mode(model, model_args)

    ########################
    # Initialize the Trainer
    ########################
    compute_metrics = None
    if eval_dataset is not None and training_args.predict_with_generate:
        compute_metrics = build_compute_metrics(
            processor.tokenizer, references=column_values(eval_dataset, "answers"), metrics=task.metrics
        )
    trainer = FlorenceTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=Florence2Collator(processor, max_target_length=data_args.max_target_length),
        processing_class=processor,
        compute_metrics=compute_metrics,
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
        metrics = train_result.metrics
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
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)

    ##################################
    # Save model and create model card
    ##################################
    save_final_model(trainer, processor, model_args, training_args.output_dir)
    card_kwargs = {
        "model_name": training_args.hub_model_id or training_args.output_dir.rstrip("/").split("/")[-1],
        "finetuned_from": model_args.model_name_or_path,
        "dataset": data_args.dataset_name,
        "tasks": "image-text-to-text",
        "tags": ["florence-2", "florence-recipes", task.name],
    }
    if trainer.is_world_process_zero():
        trainer.create_model_card(**card_kwargs)
        # Restore the inference cache (disabled for gradient checkpointing) for fast generation after loading.
        trainer.accelerator.unwrap_model(trainer.model).config.use_cache = True

    if training_args.push_to_hub:
        logger.info("Pushing to the Hub")
        trainer.push_to_hub(**card_kwargs)
    logger.info("*** Done: %s ***", training_args.output_dir)


if __name__ == "__main__":
    run_recipe(main)
