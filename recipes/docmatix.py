"""Fine-tune Florence-2 on Docmatix (HuggingFaceM4/Docmatix), streamed, alone or mixed with other sources.

This runs the package's one fine-tuning recipe, `florence_recipes.training.recipe.main` (the same as
`recipes/docvqa.py`): the YAML's `task: docmatix` or `dataset_mixture:` picks the data; collator, Trainer and
metrics are shared. This script gives the Docmatix recipes their own name and launch commands.

Offline smoke chain (tiny random Florence-2 + a synthetic Docmatix, then synthetic DocVQA; CPU, ~1 min):

    accelerate launch recipes/docmatix.py --config recipes/docmatix/smoke_stage1.yaml && \
    accelerate launch recipes/docvqa.py --config recipes/docvqa/smoke_from_docmatix.yaml

The Docmatix post's 71.4-ANLS Florence-2-large run, stage 1 then stage 2 (stage 2 starts from stage 1's
output_dir), 8 GPUs:

    accelerate launch --config_file accelerate_configs/multi_gpu.yaml --num_processes 8 \
        recipes/docmatix.py --config recipes/docmatix/large_stage1.yaml && \
    accelerate launch --config_file accelerate_configs/multi_gpu.yaml --num_processes 8 \
        recipes/docvqa.py --config recipes/docvqa/large_from_docmatix.yaml

Any recipe's budget (optimizer steps, samples, estimated H100 GPU-hours), offline: add `--budget_only true`.
"""

from florence_recipes.cli import run_recipe
from florence_recipes.training.recipe import main

if __name__ == "__main__":
    run_recipe(main)
