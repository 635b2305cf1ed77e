"""Fine-tune Florence-2 on DocVQA with transformers' Seq2SeqTrainer, scored with ANLS.

First run, offline (a tiny random Florence-2 learns to answer from the pixels of held-out images, about a
minute on 2 CPU cores; ends with held-out ANLS beside the image-blind baseline, training_curves.png and
eval/report.html):

    accelerate launch recipes/docvqa.py --config recipes/docvqa/smoke.yaml

Florence-2-base, full fine-tune, one GPU:

    accelerate launch --config_file accelerate_configs/single_gpu.yaml recipes/docvqa.py \
        --config recipes/docvqa/base_full.yaml

Every key of the YAML can be overridden on the command line, e.g. `--learning_rate 5e-6 --output_dir out`.
The recipe itself (`florence_recipes.training.recipe.main`: parse -> pre-flight checks -> data -> model -> Trainer ->
train -> evaluate -> save) is shared with `recipes/cauldron.py` and `recipes/custom.py`: the YAML's `task:` or
`dataset_mixture:` picks the data.
"""

from florence_recipes.cli import run_recipe
from florence_recipes.training.recipe import main

if __name__ == "__main__":
    run_recipe(main)
