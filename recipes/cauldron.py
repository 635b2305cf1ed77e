"""Fine-tune Florence-2 on The Cauldron: any subset, or a weighted mixture of subsets and other sources.

This runs the package's one fine-tuning recipe, `florence_recipes.training.recipe.main` (the same as
`recipes/docvqa.py`): the YAML's `task:` or `dataset_mixture:` picks the data; collator, Trainer and metrics are
shared. This script gives these recipes their own name and launch commands.

Offline smoke run (tiny random Florence-2 + a synthetic Cauldron with four subsets, CPU, ~30 s):

    accelerate launch recipes/cauldron.py --config recipes/cauldron/cauldron_mixture_smoke.yaml

One subset (AI2D, multiple choice, scored with exact match), one GPU:

    accelerate launch --config_file accelerate_configs/single_gpu.yaml recipes/cauldron.py \
        --config recipes/cauldron/ai2d.yaml

DocVQA + ChartQA + InfographicVQA by weight, with per-subset metrics (eval_chartqa_relaxed_accuracy, ...):

    accelerate launch --config_file accelerate_configs/single_gpu.yaml recipes/cauldron.py \
        --config recipes/cauldron/mixture.yaml

Another subset: `--dataset_config chartqa` (its metric comes from `florence_recipes.data.hub_tasks.CAULDRON_FAMILIES`).
A subset too large to download first: `--streaming true --max_steps 5000 --train_split "train[1000:]"
--eval_split "train[:1000]"` (streamed splits take row ranges, not percentages).
"""

from florence_recipes.cli import run_recipe
from florence_recipes.training.recipe import main

if __name__ == "__main__":
    run_recipe(main)
