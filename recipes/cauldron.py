"""Fine-tune Florence-2 on The Cauldron: any subset, or a weighted mixture of subsets and other sources.

This runs `recipes/docvqa.py`'s `main()`: that script is task-generic (the YAML's `task:` or
`dataset_mixture:` picks the data, the collator, trainer and metrics are shared), so a second training loop
would only be a copy to keep in sync. This file gives the Cauldron recipes their own entry point and launch
commands.

Offline smoke run (tiny random Florence-2 + a synthetic Cauldron with four subsets, CPU, ~30 s):

    accelerate launch recipes/cauldron.py --config recipes/cauldron/cauldron_mixture_smoke.yaml

One subset (AI2D, multiple choice, scored with exact match), one GPU:

    accelerate launch --config_file accelerate_configs/single_gpu.yaml recipes/cauldron.py \
        --config recipes/cauldron/ai2d.yaml

DocVQA + ChartQA + InfographicVQA by weight, with per-subset metrics (eval_chartqa_relaxed_accuracy, ...):

    accelerate launch --config_file accelerate_configs/single_gpu.yaml recipes/cauldron.py \
        --config recipes/cauldron/mixture.yaml

Another subset: `--dataset_config chartqa` (its metric comes from `florence_recipes.tasks.CAULDRON_FAMILIES`).
A subset too large to download first: `--streaming true --max_steps 5000 --train_split "train[1000:]"
--eval_split "train[:1000]"` (streamed splits take row ranges, not percentages).
"""

from docvqa import main  # recipes/ is on sys.path when this file runs as a script

from florence_recipes.training import run_recipe

if __name__ == "__main__":
    run_recipe(main)
