"""The module paths of florence-recipes 0.1 (one flat package), importable for one more release.

0.2 split the package into layers (see `florence_recipes/__init__.py`). Code written against the old paths
keeps working until 0.3: `from florence_recipes.trainer import FlorenceTrainer` resolves, with one
`FutureWarning` line naming the new path; a name that no longer exists fails with one line naming the
modules that took the old module's place. `python -m florence_recipes.budget` runs the new module.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import CodeType, ModuleType
from typing import Any

REMOVED_IN = "0.3"
_PACKAGE = "florence_recipes"
# Old module -> the modules its contents moved to (looked up in this order).
MOVED: dict[str, tuple[str, ...]] = {
    f"{_PACKAGE}.{old}": tuple(f"{_PACKAGE}.{new}" for new in news)
    for old, news in {
        "benchmark": (
            "tooling.benchmark",
            "tooling.benchmark_paths",
            "tooling.benchmark_ours",
            "tooling.measure",
            "tooling.memory",
            "training.flops",
        ),
        "blog_loop": ("tooling.blog_loop",),
        "budget": ("training.budget",),
        "callbacks": ("training.callbacks",),
        "checkpoints": ("training.checkpoints",),
        "collator": ("data.collator",),
        "data": ("data.loading", "data.sources"),
        "detection": ("data.boxes", "evaluation.detection"),
        "evaluation": ("training.evaluate", "evaluation.records", "configs.evaluation", "configs.parser"),
        "gpu_check": ("tooling.gpu_check", "tooling.gpu_checks", "tooling.gpu_plan", "tooling.gpu_probes"),
        "hub": ("training.hub",),
        "images": ("data.images",),
        "inference": ("models.inference", "models.outputs"),
        "legacy": ("models.legacy", "models.legacy_weights", "models.legacy_lora"),
        "metrics": ("evaluation.metrics",),
        "model_card": ("training.model_card",),
        "modeling": ("models.loading",),
        "plots": ("training.curves",),
        "provenance": ("models.provenance",),
        "recipe": ("training.recipe",),
        "report": ("evaluation.report",),
        "scoring": ("evaluation.scoring", "models.outputs"),
        "speed": ("training.speed",),
        "tasks": ("data.tasks", "data.hub_tasks", "data.own_tasks"),
        "trainer": ("training.trainer",),
        "validation": ("data.validation",),
    }.items()
}


def moved_attribute(old_module: str, name: str) -> Any:
    """`old_module.name` from where it lives now, with one FutureWarning line naming the new path."""
    if name.startswith("__"):  # module machinery (__file__, __path__, ...) is not a moved name
        raise AttributeError(name)
    for new_module in MOVED[old_module]:
        module = importlib.import_module(new_module)
        if name in vars(module):
            warnings.warn(
                f"{old_module}.{name} moved to {new_module}.{name}; the old path is removed in "
                f"florence-recipes {REMOVED_IN}",
                FutureWarning,
                stacklevel=3,
            )
            value = vars(module)[name]
            setattr(sys.modules[old_module], name, value)  # found: later lookups do not warn again
            return value
    raise AttributeError(
        f"{old_module} has no {name!r}: florence-recipes 0.2 moved that module's contents to "
        f"{', '.join(MOVED[old_module])}"
    )


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.InspectLoader):
    """Finds the old module paths that no longer exist as files: each becomes a module whose attributes are
    looked up in the new modules (`moved_attribute`)."""

    def find_spec(self, fullname: str, path: Any, target: ModuleType | None = None) -> Any:
        if fullname not in MOVED:
            return None
        # The origin is the new module's file: `python -m` puts it in sys.argv[0].
        origin = importlib.util.find_spec(MOVED[fullname][0]).origin
        return importlib.util.spec_from_loader(fullname, self, origin=origin)

    def create_module(self, spec: Any) -> ModuleType | None:
        return None  # the default module object

    def exec_module(self, module: ModuleType) -> None:
        old = module.__name__
        module.__doc__ = f"Moved in florence-recipes 0.2 to {', '.join(MOVED[old])}."
        module.__getattr__ = lambda name: moved_attribute(old, name)  # type: ignore[method-assign]

    def get_code(self, fullname: str) -> CodeType | None:
        # `python -m florence_recipes.budget`: run the module that took its place.
        new_module = MOVED[fullname][0]
        sys.stderr.write(f"{fullname} moved to {new_module}: python -m {new_module}\n")
        return importlib.util.find_spec(new_module).loader.get_code(new_module)

    def get_source(self, fullname: str) -> str | None:
        return None


def install() -> None:
    if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModules())
