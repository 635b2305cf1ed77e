"""What every command-line entry point shares: one-line errors instead of tracebacks, and logging set-up."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

import datasets
import torch
import transformers

from florence_recipes.errors import RecipeError


def run_recipe(main: Callable[[], None]) -> None:
    """Run a recipe's `main()`, reporting a `RecipeError` as one line instead of a traceback."""
    try:
        main()
    except RecipeError as err:
        sys.stderr.write(f"error: {err}\n")
        sys.exit(1)
    finally:
        # Tear the process group down explicitly: left to interpreter exit, gloo/NCCL threads can abort a
        # finished run ("terminate called without an active exception") and fail the whole launch.
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def setup_logging(main_process: bool = True, library_level: int = logging.WARNING) -> None:
    """The recipe's own messages (parameter counts, dataset sizes, ...) at INFO on the main process, the
    libraries at `library_level` (a training run passes the level the user asked for with `log_level`)."""
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    recipe_level = logging.INFO if main_process else logging.WARNING
    for name in ("florence_recipes", "__main__"):
        logging.getLogger(name).setLevel(recipe_level)
    datasets.utils.logging.set_verbosity(library_level)
    transformers.utils.logging.set_verbosity(library_level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()
