"""Layer 4, evaluation: how predictions are scored and what an evaluation leaves on disk.

Owns the item metrics (`metrics`: ANLS, Levenshtein similarity, exact match, VQA and relaxed accuracy),
COCO mAP of boxes (`detection`), the scorer the Trainer calls as `compute_metrics` (`scoring`), the files of an
evaluation (`records`: predictions.jsonl, metrics.json, submission.json) and the HTML reports (`report`). May
import `data`, `models`, `configs` and `errors`; running an evaluation through the Trainer is
`florence_recipes.training.evaluate`, a layer above.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    # `florence_recipes.evaluation` was a module in 0.1: its names resolve for one release.
    from florence_recipes._moved import moved_attribute

    return moved_attribute(__name__, name)
