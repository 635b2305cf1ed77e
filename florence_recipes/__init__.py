"""Recipes to fine-tune Florence-2 with transformers' Seq2SeqTrainer.

The package is built in layers; a module may import from its own layer and the layers below it, never above
(`tests/test_code_layout.py` enforces it):

    errors, cli        one-line errors and logging, for every layer
    1 configs/         typed arguments and the YAML + command-line parser
    2 data/            tasks, loading and mixtures, bad-sample checks, images, the collator
    3 models/          Florence-2 facts, loading and training modes, legacy conversion, provenance, inference
    4 evaluation/      metrics, mAP, the scorer (compute_metrics), evaluation files, HTML reports
    5 builders/        offline fixtures: random Florence-2 models and synthetic datasets in the Hub's layouts
    6 training/        FlorenceTrainer, speed switches, callbacks, checkpoints, curves, Hub, budget, the recipes
    7 tooling/         benchmark against the blog's loop, the first-GPU check

Each subpackage's docstring says what it owns. The 0.1 module paths (`florence_recipes.trainer`, ...) still
import for one release, with a warning naming the new path (`florence_recipes._moved`).
"""

from florence_recipes import _moved

__version__ = "0.2.0"

_moved.install()
