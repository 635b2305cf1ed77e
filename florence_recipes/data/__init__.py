"""Layer 2, data: from a dataset's rows to the model's batches.

Owns the task registry and the built-in tasks (`tasks`, `hub_tasks`, `own_tasks`: how a row becomes image,
prompt, target and gold answers), detection targets (`boxes`), other tools' dataset layouts read into those
tasks (`formats`: maestro, COCO, LLaVA), loading one source (`loading`) and a run's
sources and mixtures (`sources`), the bad-sample checks (`validation`), images as the model sees them
(`images`) and the Seq2Seq collator (`collator`). May import `configs` and `errors`, nothing above: the data
never knows which model, trainer or metric consumes it.
"""

from typing import Any

# Importing the built-in tasks registers them, so `get_task("docvqa")` works wherever `data` is imported.
from florence_recipes.data import hub_tasks, own_tasks  # noqa: F401


def __getattr__(name: str) -> Any:
    # `florence_recipes.data` was one module in 0.1: its names resolve for one release (florence_recipes._moved).
    from florence_recipes._moved import moved_attribute

    return moved_attribute(__name__, name)
