"""The fine-tuning recipe every launch script runs: YAML + CLI -> data -> Florence-2 -> Trainer -> saved model.

`recipes/docvqa.py`, `recipes/cauldron.py` and `recipes/custom.py` are this `main()` under the names users
launch; the YAML's `task:` or `dataset_mixture:` picks the data, and the collator, trainer and metrics are the
same for every task.
"""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import set_seed

from florence_recipes.builders import build_offline_fixtures
from florence_recipes.builders.visual_qa import offline_result_note, visual_qa_options
from florence_recipes.cli import setup_logging
from florence_recipes.configs.parser import parse_recipe_args
from florence_recipes.data.sources import data_sources, format_metrics, load_eval_dataset, load_train_dataset
from florence_recipes.data.validation import bad_sample_metrics, check_samples, count_truncated_targets
from florence_recipes.models.loading import (
    apply_training_mode,
    load_model,
    load_processor,
    set_generation_length,
)
from florence_recipes.training.budget import report_budget
from florence_recipes.training.checkpoints import resolve_checkpoint
from florence_recipes.training.evaluate import write_run_evaluation
from florence_recipes.training.hub import check_hub_access
from florence_recipes.training.trainer import FlorenceTrainer

logger = logging.getLogger(__name__)


def main() -> None:
    model_args, data_args, training_args = parse_recipe_args()

    ###############
    # Setup logging
    ###############
    setup_logging(training_args.should_log, training_args.get_process_log_level())
    logger.info("Model parameters %s", model_args)
    logger.info("Data parameters %s", data_args)
    logger.info("Training/evaluation parameters %s", training_args)

    ###################################################
    # Pre-flight checks: fail before any model is loaded
    ###################################################
    sources = data_sources(data_args, training_args)  # one dataset, or the entries of dataset_mixture
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
    where = "split of " + ", ".join(dict.fromkeys(source.dataset for source in sources))
    policy, num_proc = data_args.on_bad_sample, data_args.preprocessing_num_workers
    train_dataset = eval_dataset = None
    bad_samples = {}
    with training_args.main_process_first(desc="dataset standardisation"):
        # Bad samples fail (or are dropped and counted) now, not hours into training.
        if training_args.do_train:
            train_dataset, bad_samples["train"] = check_samples(
                load_train_dataset(sources, data_args, training_args.seed),
                policy,
                f"train {where}",
                num_proc=num_proc,
            )
        if training_args.do_eval:
            eval_dataset, bad_samples["eval"] = check_samples(
                load_eval_dataset(sources, data_args), policy, f"eval {where}", num_proc=num_proc
            )
    for name, dataset in (("train", train_dataset), ("eval", eval_dataset)):
        if dataset is not None:
            logger.info("%s examples: %s", name, len(dataset) if hasattr(dataset, "__len__") else "streamed")

    ##########################
    # Load processor and model
    ##########################
    processor = load_processor(model_args)
    truncated_targets = None
    if bad_samples.get("train") is not None:  # a stream has no length, so it is neither checked nor counted
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
    # It builds the collator, the scorer (ANLS & co., per source in a mixture, mAP for boxes), the
    # non-finite-loss guard and training_curves.png from the arguments.
    trainer = FlorenceTrainer(
        model=model,
        args=training_args,
        processor=processor,
        sources=sources,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        max_target_length=data_args.max_target_length,
        training_mode=model_args.training_mode,
        # Skipped eval items still count: each scores 0 in the headline metric (see TextScorer).
        eval_dropped=bad_samples["eval"].dropped if bad_samples.get("eval") else None,
    )

    ###############
    # Training loop
    ###############
    if training_args.do_train:
        metrics = trainer.train(resume_from_checkpoint=last_checkpoint).metrics
        trainer.exit_if_stopped_by_signal()  # SIGTERM/SIGUSR1: checkpoint saved, exit code 75
        if bad_samples["train"] is not None:
            metrics |= bad_sample_metrics(bad_samples["train"], prefix="train_")
            metrics["train_targets_truncated"] = truncated_targets
            metrics["train_samples"] = len(train_dataset)
        metrics |= format_metrics(sources, data_args, "train")  # what reading another tool's layout skipped
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
        metrics |= bad_sample_metrics(bad_samples["eval"], prefix="eval_")
        metrics |= format_metrics(sources, data_args, "eval")
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        if training_args.eval_report and trainer.is_world_process_zero():
            # The files recipes/evaluate.py writes, from the predictions this evaluation generated.
            dropped = bad_samples["eval"].dropped if bad_samples.get("eval") else ()
            eval_dir = Path(training_args.output_dir) / "eval"
            report = write_run_evaluation(trainer, eval_dataset, metrics, eval_dir, dropped)
            logger.info("Evaluation files and report: %s", report or "none (nothing was scored)")

    ##################################
    # Save model and create model card
    ##################################
    trainer.save_final_model(training_args.output_dir, merge_lora=bool(model_args.merge_lora))
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
    if data_args.build_offline_fixtures and training_args.do_eval and "eval_anls" in metrics:
        logger.info(offline_result_note(sources[0].dataset, metrics["eval_anls"]))
        if visual_qa_options(sources[0].dataset) is not None:  # a run that shows learning: what to do next
            for line in next_commands(training_args.output_dir):
                logger.info(line)
    # Leave the process group together and on purpose: a process that exits while another still writes tore gloo
    # down under it ("terminate called without an active exception", seen with ZeRO-3 on a loaded CPU).
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()


def next_commands(output_dir: str) -> list[str]:
    """What a user runs after the first command: their own data, a real GPU run, an evaluation."""
    return [
        f"Curves and the evaluation report of this run: {output_dir}/training_curves.png, {output_dir}/eval/report.html",
        "Next: (1) your own data (a folder of train.jsonl + validation.jsonl, or a maestro / COCO / LLaVA folder as "
        "it is): accelerate launch recipes/custom.py --config recipes/custom/vqa_jsonl.yaml --dataset_name DIR",
        "(2) Florence-2-base on DocVQA on a GPU: accelerate launch --config_file accelerate_configs/single_gpu.yaml "
        "recipes/docvqa.py --config recipes/docvqa/base_full.yaml",
        "(3) evaluate a trained model (ANLS, predictions.jsonl, report.html): python recipes/evaluate.py "
        "--model_name_or_path outputs/florence-2-base-docvqa-full --dataset_name HuggingFaceM4/DocumentVQA "
        "--split validation --output_dir eval/docvqa-base",
    ]
