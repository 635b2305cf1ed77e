"""Helpers for the evaluation, predict, report and demo tests: a tiny model that answers something worth
checking, and a real headless Chromium.

A random tiny Florence-2 answers nothing right, which would make every ANLS 0 and every score check
vacuous. `fit_tiny_model` makes it memorise the answers of one split instead (most of them within the
default budget, not all), so evaluations get a mix of exact, partial and wrong answers, before/after
comparisons see answers change, and a detection fit prints real boxes.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from florence_recipes.data.collator import Florence2Collator
from florence_recipes.data.loading import load_task_split
from florence_recipes.data.tasks import get_task

if TYPE_CHECKING:
    from playwright.sync_api import Page

# Debian's chromium in a container: no sandbox, GPU, first-run UI or background traffic.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
# Set to a folder (e.g. docs) to also keep the screenshots the browser tests take there.
SCREENSHOT_DIR_ENV = "FLORENCE_RECIPES_SCREENSHOTS"


def fit_tiny_model(
    model_dir: Path, dataset_dir: Path, out_dir: Path, task: str = "docvqa", split: str = "validation",
    steps: int = 55, learning_rate: float = 3e-3,
) -> Path:  # fmt: skip
    """Train `model_dir` on every row of `split` (one full batch per step) and save it to `out_dir`."""
    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    rows = load_task_split(get_task(task), str(dataset_dir), split)
    batch = Florence2Collator(processor, max_target_length=64)(list(rows))
    # The DaViT backward pass costs ~50x the rest on CPU; the random image features already tell the
    # images apart, so training the language model alone memorises the answers in a few seconds.
    model.model.vision_tower.requires_grad_(False)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate)
    model.train()
    for _ in range(steps):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


@contextmanager
def chromium_page(width: int = 1200, height: int = 900) -> Iterator[Page]:
    """A page of Debian's headless Chromium driven by Playwright; skips the test if either is missing."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="browser checks need Playwright: pip install -e .[dev]"
    )
    executable = shutil.which("chromium")
    if executable is None:
        pytest.skip("browser checks need Debian's Chromium: apt-get install chromium")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()


def save_screenshot(page: Page, folder: Path, name: str, full_page: bool = False) -> Path:
    """Screenshot to `folder/name`, and to $FLORENCE_RECIPES_SCREENSHOTS/name when that is set."""
    path = folder / name
    page.screenshot(path=str(path), full_page=full_page)
    keep = os.environ.get(SCREENSHOT_DIR_ENV)
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(keep) / name)
    return path
