"""recipes/demo.py serves a Gradio app on localhost that answers a question typed into the page of a real
browser (Debian's headless Chromium through Playwright).

    FLORENCE_RECIPES_SCREENSHOTS=docs pytest tests/test_demo_browser.py

also refreshes docs/demo.png.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from eval_helpers import chromium_page, save_screenshot

from florence_recipes.configs.model import ModelArguments
from florence_recipes.data.loading import load_task_split
from florence_recipes.data.tasks import get_task
from florence_recipes.models.inference import answer, load_for_inference

GENERATION = ("--num_beams", "1", "--max_new_tokens", "32")
TITLE = "Florence-2 DocVQA demo (tiny test model)"
STARTUP_TIMEOUT = 180  # seconds: importing gradio and loading the model on a busy 2-core machine


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def demo_url(fitted_model_dir: Path, tmp_path: Path) -> Iterator[str]:
    pytest.importorskip("gradio", reason="the demo needs Gradio: pip install -e .[demo]")
    port = free_port()
    log = tmp_path / "demo.log"
    with open(log, "w") as output:
        server = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "recipes" / "demo.py"), "--model_name_or_path", str(fitted_model_dir),
             "--server_port", str(port), "--title", TITLE, *GENERATION],
            cwd=REPO_ROOT, stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            assert server.poll() is None, f"demo exited with {server.returncode}:\n{log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                assert time.monotonic() < deadline, (
                    f"demo not up after {STARTUP_TIMEOUT}s:\n{log.read_text()}"
                )
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_demo_answers_a_typed_question(
    demo_url: str, fitted_model_dir: Path, docvqa_dir: Path, tmp_path: Path
) -> None:
    # A question the fitted model answers right, so the page must show that exact gold answer.
    rows = load_task_split(get_task("docvqa"), str(docvqa_dir), "validation")
    model, processor = load_for_inference(ModelArguments(model_name_or_path=str(fitted_model_dir)))
    for row in rows:
        question = row["prompt"].removeprefix("<DocVQA>")
        expected = answer(model, processor, [row["image"]], text=question, max_new_tokens=32, num_beams=1)[0]
        if expected in row["answers"]:
            break
    else:
        pytest.fail("the fitted model answers no validation question right")
    document = tmp_path / "document.png"
    row["image"].save(document)

    with chromium_page(height=950) as page:
        page.goto(demo_url)
        page.wait_for_function("title => document.title === title", arg=TITLE)
        page.locator("#document input[type=file]").set_input_files(str(document))
        page.locator("#question textarea").fill(question)
        page.locator("#ask").click()
        page.wait_for_function(
            "() => document.querySelector('#answer textarea').value !== ''", timeout=60_000
        )
        assert page.locator("#answer textarea").input_value() == expected
        # Gradio fades the outputs in (`.pending`); wait for it to settle before the screenshot.
        page.wait_for_function("() => document.querySelector('.pending') === null")
        page.wait_for_timeout(300)
        save_screenshot(page, tmp_path, "demo.png")
