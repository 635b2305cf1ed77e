"""Offline stand-in for ``HuggingFaceM4/Docmatix`` in the Hub's layout, for tests and smoke runs.

Docmatix on the Hub (dataset card ``configs``, commit 83fbac1 of July 2024, and the dataset viewer):

* config ``images``: split ``train`` only, ~1.27M rows; each row is one PDF: ``images`` (its pages, 150 dpi) and
  ``texts`` (its Q/A turns, ``{user, assistant, source}``), The Cauldron's layout; 2.4M images, 9.5M Q/A pairs;
* config ``pdf``: the same rows with the PDF bytes (column ``pdf``) instead of page images;
* config ``zero-shot-exp``: ``train`` (1,700 rows) and ``test`` (200 rows), same features as ``images``.

The stand-in writes ``images/train-*.parquet`` and ``zero-shot-exp/{train,test}-*.parquet`` plus a README.md
whose ``configs`` map them, so ``load_dataset(folder, "images", split="train", streaming=True)`` reads it the
way it reads the Hub repository. Rows have 1 to 8 turns and a few have two pages, so that the image and turn
fractions and the multi-image policy have something to act on.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

from florence_recipes.builders.datasets import CAULDRON_FEATURES
from florence_recipes.builders.documents import ImageSize, RenderedDocument, render_document
from florence_recipes.builders.layout import (
    build_once,
    dataset_card,
    png_bytes,
    seeded_rng,
    split_info,
    write_parquet,
)

DOCMATIX_FEATURES = CAULDRON_FEATURES  # images: [Image], texts: [{user, assistant, source}]
DOCMATIX_CONFIGS = ("images", "zero-shot-exp")
MAX_TURNS_PER_ROW = 8
# Every TWO_PAGE_EVERY-th row holds two pages (Docmatix rows are whole PDFs, often several pages long).
TWO_PAGE_EVERY = 10


def _docmatix_rows(
    documents: list[RenderedDocument], num_rows: int, split_tag: str, rng: random.Random
) -> dict[str, list[Any]]:
    """Rows reusing a small pool of rendered pages; each row's turns are its own (the `source` names a unique
    PDF key, as Docmatix's turns name their PDFA document), so no two rows have the same texts."""
    pages = [{"bytes": png_bytes(document.image), "path": None} for document in documents]
    rows: dict[str, list[Any]] = {"images": [], "texts": []}
    for index in range(num_rows):
        first = index % len(documents)
        page_numbers = [first, (first + 1) % len(documents)] if index % TWO_PAGE_EVERY == 1 else [first]
        fields = [field for number in page_numbers for field in documents[number].fields]
        num_turns = rng.randint(1, min(MAX_TURNS_PER_ROW, len(fields)))
        key = f"{split_tag}-{index:06d}"
        rows["images"].append([pages[number] for number in page_numbers])
        rows["texts"].append(
            [
                {
                    "user": rng.choice(field.questions),
                    "assistant": field.value,
                    "source": f"PDFA key: {key}",
                }
                for field in rng.sample(fields, num_turns)
            ]
        )
    return rows


def write_synthetic_docmatix(
    out_dir: str | os.PathLike[str],
    num_train_rows: int = 240,
    num_zero_shot_test_rows: int = 8,
    num_pages: int = 24,
    image_size: ImageSize = (384, 512),
    seed: int = 0,
) -> Path:
    """A folder laid out like ``HuggingFaceM4/Docmatix`` (configs ``images`` and ``zero-shot-exp``, see the
    module docstring) with :data:`DOCMATIX_FEATURES`. ``num_pages`` rendered documents are shared by the rows
    (rendering dominates the build time); each row has 1-8 questions about its pages, answered by the text
    drawn there."""
    if num_train_rows < 1 or num_zero_shot_test_rows < 1 or num_pages < 2:
        raise ValueError("num_train_rows and num_zero_shot_test_rows must be >= 1, num_pages >= 2")
    args = {
        "num_train_rows": num_train_rows,
        "num_zero_shot_test_rows": num_zero_shot_test_rows,
        "num_pages": num_pages,
        "image_size": image_size,
        "seed": seed,
    }

    def write(folder: Path) -> None:
        page_rng = seeded_rng(seed, "docmatix-pages")
        documents = [render_document(page_rng, image_size) for _ in range(num_pages)]
        layout = {
            "images": {"train": num_train_rows},
            "zero-shot-exp": {"train": num_zero_shot_test_rows, "test": num_zero_shot_test_rows},
        }
        infos, configs = [], []
        for config, split_rows in layout.items():
            splits, sizes = {}, {}
            for split, num_rows in split_rows.items():
                rows = _docmatix_rows(
                    documents, num_rows, f"{config}-{split}", seeded_rng(seed, "docmatix", config, split)
                )
                path = folder / config / f"{split}-00000-of-00001.parquet"
                splits[split] = write_parquet(rows, DOCMATIX_FEATURES, path)
                sizes[split] = path.stat().st_size
            infos.append({"config_name": config, **split_info(DOCMATIX_FEATURES, splits, sizes)})
            configs.append(
                {
                    "config_name": config,
                    "data_files": [{"split": split, "path": f"{config}/{split}-*"} for split in split_rows],
                }
            )
        body = (
            "Synthetic stand-in for `HuggingFaceM4/Docmatix` written offline by `florence_recipes.builders`: "
            "same configs (`images`, `zero-shot-exp`; no `pdf`) and features, rendered invoices, receipts and "
            "forms instead of PDFA pages."
        )
        (folder / "README.md").write_text(dataset_card("Synthetic Docmatix", body, infos, configs))

    return build_once(out_dir, "write_synthetic_docmatix", args, [*DOCMATIX_CONFIGS, "README.md"], write)
