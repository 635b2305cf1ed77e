"""Offline stand-ins for the datasets the recipes train on, written in the same on-disk layout and schema as
the Hub repositories, so that ``datasets.load_dataset(<folder>)`` goes down the same code path as
``load_dataset("HuggingFaceM4/DocumentVQA")`` / ``load_dataset("HuggingFaceM4/the_cauldron", "ai2d")``:

* :func:`write_synthetic_docvqa` - ``HuggingFaceM4/DocumentVQA``: ``data/{split}-00000-of-00001.parquet``.
* :func:`write_synthetic_cauldron` - ``HuggingFaceM4/the_cauldron``: ``{subset}/train-00000-of-00001.parquet``.
* :func:`write_synthetic_vqa_jsonl` / :func:`write_synthetic_detection` - a user's own data:
  ``images/*.png`` next to ``train.jsonl`` and ``validation.jsonl``.

Everything is a deterministic function of the arguments (seed included). Each writer is idempotent: it
builds in a hidden sibling folder, moves the result into place and writes a marker file last; a folder
whose marker records the same arguments is returned untouched, anything else (missing or different marker)
is rebuilt.
"""

import itertools
import json
import os
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from datasets import Features, Image, Value
from PIL import Image as PILImage

from florence_recipes.builders.documents import ImageSize, RenderedDocument, render_document
from florence_recipes.builders.figures import (
    render_bar_chart,
    render_cycle_diagram,
    render_infographic,
    render_shapes,
)
from florence_recipes.builders.layout import (
    build_once,
    dataset_card,
    png_bytes,
    seeded_rng,
    split_info,
    write_parquet,
)

# Schema of HuggingFaceM4/DocumentVQA as declared in its dataset card (ids are int32 there). Lists are
# written as [feature] rather than List/Sequence, which reads the same in datasets 3.x and >= 4.
DOCVQA_FEATURES = Features(
    {
        "questionId": Value("int32"),
        "question": Value("string"),
        "question_types": [Value("string")],
        "image": Image(),
        "docId": Value("int32"),
        "ucsf_document_id": Value("string"),
        "ucsf_document_page_no": Value("string"),
        "answers": [Value("string")],
    }
)
# Schema of every HuggingFaceM4/the_cauldron subset.
CAULDRON_FEATURES = Features(
    {
        "images": [Image()],
        "texts": [{"user": Value("string"), "assistant": Value("string"), "source": Value("string")}],
    }
)
DOCVQA_SPLITS = ("train", "validation", "test")
CAULDRON_SUBSETS = ("docvqa", "chartqa", "ai2d", "infographic_vqa")
# The `source` string the_cauldron stores in each turn of a subset.
_CAULDRON_SOURCES = {
    "docvqa": "DocVQA",
    "chartqa": "ChartQA",
    "ai2d": "AI2D",
    "infographic_vqa": "InfographicVQA",
}
# Per row index modulo 8: (number of images, number of user/assistant turns). Covers single-turn, multi-turn,
# multi-image and text-only rows, all of which occur in the_cauldron, within the first few rows.
_CAULDRON_ROW_PATTERN = ((1, 1), (2, 1), (0, 1), (1, 2), (1, 3), (1, 1), (1, 2), (1, 1))


# ---------------------------------------------------------------------------------------------------------
# DocVQA


def docvqa_documents(
    split: str, num_docs: int, image_size: ImageSize = (384, 512), seed: int = 0
) -> list[RenderedDocument]:
    """The documents behind one split of :func:`write_synthetic_docvqa`, in row order; also what tests use to
    check that the answers are drawn on the page."""
    rng = seeded_rng(seed, "docvqa-documents", split)
    return [render_document(rng, image_size) for _ in range(num_docs)]


def write_docvqa_split(folder: Path, split: str, rows: dict[str, list[Any]]) -> tuple[dict[str, int], int]:
    """``data/{split}-00000-of-00001.parquet`` of a DocumentVQA-layout folder: its split info and file size."""
    path = folder / "data" / f"{split}-00000-of-00001.parquet"
    info = write_parquet(rows, DOCVQA_FEATURES, path)
    return info, path.stat().st_size


def write_docvqa_card(
    folder: Path, title: str, body: str, splits: dict[str, dict[str, int]], sizes: dict[str, int]
) -> None:
    """The README.md of a DocumentVQA-layout folder: one ``default`` config with a ``data/{split}-*`` per split."""
    configs = [
        {
            "config_name": "default",
            "data_files": [{"split": split, "path": f"data/{split}-*"} for split in splits],
        }
    ]
    card = dataset_card(title, body, [split_info(DOCVQA_FEATURES, splits, sizes)], configs)
    (folder / "README.md").write_text(card)


def _docvqa_rows(
    documents: Iterable[RenderedDocument],
    questions_per_doc: int,
    rng: random.Random,
    hidden: bool,
    doc_ids: Iterator[int],
    question_ids: Iterator[int],
) -> dict[str, list[Any]]:
    """One split's rows in the DocumentVQA schema: up to `questions_per_doc` questions per document, each row
    repeating the document's image, `docId` and UCSF ids; `hidden`: no answers or question types (test)."""
    rows: dict[str, list[Any]] = {name: [] for name in DOCVQA_FEATURES}
    for document in documents:
        image = {"bytes": png_bytes(document.image), "path": None}
        ucsf_id = "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=4)) + f"{rng.randint(0, 9999):04d}"
        page_no, doc_id = str(rng.randint(1, 6)), next(doc_ids)
        for field in rng.sample(document.fields, min(questions_per_doc, len(document.fields))):
            question_types = [field.question_type] + (
                ["form"] if field.question_type == "handwritten" else []
            )
            rows["questionId"].append(next(question_ids))
            rows["question"].append(rng.choice(field.questions))
            rows["question_types"].append(None if hidden else question_types)
            rows["image"].append(image)
            rows["docId"].append(doc_id)
            rows["ucsf_document_id"].append(ucsf_id)
            rows["ucsf_document_page_no"].append(page_no)
            rows["answers"].append(None if hidden else list(field.answers))
    return rows


def write_synthetic_docvqa(
    out_dir: str | os.PathLike[str],
    num_train_docs: int = 16,
    num_validation_docs: int = 4,
    num_test_docs: int = 4,
    questions_per_doc: int = 3,
    image_size: ImageSize = (384, 512),
    seed: int = 0,
) -> Path:
    """A folder laid out like ``HuggingFaceM4/DocumentVQA`` (``data/{split}-00000-of-00001.parquet`` plus a
    README.md whose ``configs`` map the splits) with the same features (:data:`DOCVQA_FEATURES`).

    Each document gets ``questions_per_doc`` questions (fewer if it has fewer fields), each a row repeating
    the document's image, ``docId`` and UCSF ids. Answers are the drawn values first, then accepted
    spellings ("$45.20" / "45.20", "12/03/1998" / "12 March 1998"). As in the Hub's test split, whose
    annotations are withheld, ``answers`` and ``question_types`` are null there. Splits with 0 documents are
    left out.
    """
    if questions_per_doc < 1:
        raise ValueError("questions_per_doc must be at least 1")
    doc_counts = {"train": num_train_docs, "validation": num_validation_docs, "test": num_test_docs}
    if min(doc_counts.values()) < 0 or sum(doc_counts.values()) == 0:
        raise ValueError(f"document counts must be >= 0 and not all 0, got {doc_counts}")
    args = {f"num_{split}_docs": count for split, count in doc_counts.items()}
    args |= {"questions_per_doc": questions_per_doc, "image_size": image_size, "seed": seed}

    def write(folder: Path) -> None:
        splits: dict[str, dict[str, int]] = {}
        sizes: dict[str, int] = {}
        doc_ids, question_ids = (
            itertools.count(1000),
            itertools.count(50000),
        )  # unique across splits, as on the Hub
        for split in DOCVQA_SPLITS:
            if doc_counts[split] == 0:
                continue
            rows = _docvqa_rows(
                docvqa_documents(split, doc_counts[split], image_size, seed),
                questions_per_doc,
                seeded_rng(seed, "docvqa-questions", split),
                split == "test",  # the Hub withholds test annotations
                doc_ids,
                question_ids,
            )
            splits[split], sizes[split] = write_docvqa_split(folder, split, rows)
        body = (
            "Synthetic stand-in for `HuggingFaceM4/DocumentVQA` written offline by `florence_recipes.builders`: "
            "same file layout and features, rendered invoices, receipts and forms instead of UCSF documents. "
            "As on the Hub, the test split's `answers` and `question_types` are null."
        )
        write_docvqa_card(folder, "Synthetic DocumentVQA", body, splits, sizes)

    return build_once(out_dir, "write_synthetic_docvqa", args, ["data", "README.md"], write)


# ---------------------------------------------------------------------------------------------------------
# The Cauldron

# A rendered picture, the text drawn on it (what a text-only row shows instead) and questions about it.
_Sample = tuple[PILImage.Image, str, list[tuple[str, str]]]


def _docvqa_sample(rng: random.Random, image_size: ImageSize) -> _Sample:
    document = render_document(rng, image_size)
    context = "\n".join(
        field.value if field.key == "Title" else f"{field.key}: {field.value}" for field in document.fields
    )
    fields = rng.sample(document.fields, min(3, len(document.fields)))
    return document.image, context, [(rng.choice(field.questions), field.value) for field in fields]


def _chartqa_sample(rng: random.Random, image_size: ImageSize) -> _Sample:
    chart = render_bar_chart(rng, (image_size[0], image_size[0]))
    values = dict(zip(chart.labels, chart.values, strict=True))
    first, second = rng.sample(chart.labels, 2)
    highest = max(values, key=values.__getitem__)
    lowest = min(values, key=values.__getitem__)
    qa = [
        (f"What is the value for {first}?", str(values[first])),
        ("Which category has the highest value?", highest),
        (f"What is the sum of {first} and {second}?", str(values[first] + values[second])),
        (
            "What is the difference between the highest and the lowest value?",
            str(values[highest] - values[lowest]),
        ),
    ]
    context = f"{chart.title}: " + ", ".join(f"{label} {value}" for label, value in values.items())
    return chart.image, context, rng.sample(qa, 3)


def _multiple_choice(
    rng: random.Random, question: str, answer: str, distractors: Sequence[str]
) -> tuple[str, str]:
    """the_cauldron's AI2D prompt: lettered choices and "Answer with the letter.", answered "Answer: X"."""
    choices = [answer, *rng.sample([d for d in dict.fromkeys(distractors) if d != answer], 3)]
    rng.shuffle(choices)
    letters = "ABCD"
    lines = "\n".join(f"{letter}. {choice}" for letter, choice in zip(letters, choices, strict=True))
    prompt = f"Question: {question}\nChoices:\n{lines}\nAnswer with the letter."
    return prompt, f"Answer: {letters[choices.index(answer)]}"


def _ai2d_sample(rng: random.Random, image_size: ImageSize) -> _Sample:
    diagram = render_cycle_diagram(rng, (image_size[0], image_size[0]))
    stages, count = diagram.stages, len(diagram.stages)
    after = rng.randrange(count if diagram.cyclic else count - 1)
    before = rng.randrange(1, count)
    qa = [
        _multiple_choice(
            rng, f"Which stage comes after {stages[after]}?", stages[(after + 1) % count], stages
        ),
        _multiple_choice(rng, f"Which stage comes before {stages[before]}?", stages[before - 1], stages),
        _multiple_choice(
            rng, "How many stages are shown in the diagram?", str(count), [str(n) for n in range(2, 9)]
        ),
    ]
    arrow = " -> "
    context = f"{diagram.title}: {arrow.join(stages)}" + (f"{arrow}{stages[0]}" if diagram.cyclic else "")
    return diagram.image, context, qa


def _infographic_sample(rng: random.Random, image_size: ImageSize) -> _Sample:
    infographic = render_infographic(rng, image_size)
    qa = [(f"What percentage of {phrase}?", value) for phrase, value in infographic.stats]
    qa.append(("Which year does this infographic describe?", infographic.year))
    context = "\n".join([infographic.title, *(f"{value} of {phrase}" for phrase, value in infographic.stats)])
    return infographic.image, context, rng.sample(qa, 3)


_CAULDRON_SAMPLERS: dict[str, Callable[[random.Random, ImageSize], _Sample]] = {
    "docvqa": _docvqa_sample,
    "chartqa": _chartqa_sample,
    "ai2d": _ai2d_sample,
    "infographic_vqa": _infographic_sample,
}


def _cauldron_rows(subset: str, num_rows: int, image_size: ImageSize, seed: int) -> dict[str, list[Any]]:
    rng = seeded_rng(seed, "cauldron", subset)
    sample = _CAULDRON_SAMPLERS[subset]
    source = _CAULDRON_SOURCES[subset]
    rows: dict[str, list[Any]] = {"images": [], "texts": []}
    for index in range(num_rows):
        num_images, num_turns = _CAULDRON_ROW_PATTERN[index % len(_CAULDRON_ROW_PATTERN)]
        image, context, qa = sample(rng, image_size)
        images = [image]
        if num_images == 0:  # text-only row: the picture's content is given in the prompt instead
            qa[0] = (f"{context}\n\n{qa[0][0]}", qa[0][1])
            images = []
        elif num_images == 2:  # two pictures, the question is about the second one
            second, _, second_qa = sample(rng, image_size)
            images = [image, second]
            qa = [(f"Look at the second image. {second_qa[0][0]}", second_qa[0][1])]
        rows["images"].append([{"bytes": png_bytes(picture), "path": None} for picture in images])
        rows["texts"].append(
            [{"user": user, "assistant": answer, "source": source} for user, answer in qa[:num_turns]]
        )
    return rows


def write_synthetic_cauldron(
    out_dir: str | os.PathLike[str],
    subsets: Sequence[str] = CAULDRON_SUBSETS,
    rows_per_subset: int = 16,
    image_size: ImageSize = (384, 512),
    seed: int = 0,
) -> Path:
    """A folder laid out like ``HuggingFaceM4/the_cauldron``: ``{subset}/train-00000-of-00001.parquet`` per
    subset and a README.md declaring one config per subset, so ``load_dataset(folder, "ai2d", split="train")``
    works. Rows follow :data:`CAULDRON_FEATURES`; every 8 rows hold single- and multi-turn rows, one row with
    two images (the question is about the second) and one with no image (the picture's text is in the
    prompt). Documents and infographics are ``image_size``; charts and diagrams are square, ``image_size[0]``
    wide.
    """
    unknown = [subset for subset in subsets if subset not in _CAULDRON_SAMPLERS]
    if unknown or not subsets:
        raise ValueError(f"unsupported subsets {unknown or list(subsets)}; choose from {CAULDRON_SUBSETS}")
    if rows_per_subset < 1:
        raise ValueError("rows_per_subset must be at least 1")
    subsets = list(dict.fromkeys(subsets))
    args = {"subsets": subsets, "rows_per_subset": rows_per_subset, "image_size": image_size, "seed": seed}

    def write(folder: Path) -> None:
        infos, configs = [], []
        for subset in subsets:
            path = folder / subset / "train-00000-of-00001.parquet"
            splits = {
                "train": write_parquet(
                    _cauldron_rows(subset, rows_per_subset, image_size, seed), CAULDRON_FEATURES, path
                )
            }
            infos.append(
                {
                    "config_name": subset,
                    **split_info(CAULDRON_FEATURES, splits, {"train": path.stat().st_size}),
                }
            )
            configs.append(
                {"config_name": subset, "data_files": [{"split": "train", "path": f"{subset}/train-*"}]}
            )
        body = (
            "Synthetic stand-in for `HuggingFaceM4/the_cauldron` written offline by `florence_recipes.builders`: "
            f"same layout and features, subsets {', '.join(subsets)}."
        )
        (folder / "README.md").write_text(dataset_card("Synthetic The Cauldron", body, infos, configs))

    return build_once(out_dir, "write_synthetic_cauldron", args, [*subsets, "README.md"], write)


# ---------------------------------------------------------------------------------------------------------
# A user's own data: images + JSONL


def _write_jsonl_dataset(
    folder: Path, splits: dict[str, list[tuple[PILImage.Image, dict[str, Any]]]]
) -> None:
    """``images/{id}.png`` and one ``{split}.jsonl`` per split, ``image`` relative to the JSONL's folder."""
    (folder / "images").mkdir()
    for split, examples in splits.items():
        with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as jsonl:
            for index, (image, fields) in enumerate(examples):
                example_id = f"{split}-{index:05d}"
                relative = f"images/{example_id}.png"
                (folder / relative).write_bytes(png_bytes(image))
                jsonl.write(json.dumps({"id": example_id, "image": relative, **fields}) + "\n")


def write_synthetic_vqa_jsonl(
    out_dir: str | os.PathLike[str],
    num_train: int = 32,
    num_validation: int = 8,
    image_size: ImageSize = (384, 512),
    seed: int = 0,
) -> Path:
    """A user's own VQA data: ``images/*.png`` plus ``train.jsonl``/``validation.jsonl`` with lines
    ``{"id", "image": "images/<id>.png", "question", "answers": [drawn value, other accepted spellings]}``
    about rendered documents, one question per image."""
    args = {"num_train": num_train, "num_validation": num_validation, "image_size": image_size, "seed": seed}

    def write(folder: Path) -> None:
        splits: dict[str, list[tuple[PILImage.Image, dict[str, Any]]]] = {}
        for split, count in (("train", num_train), ("validation", num_validation)):
            rng = seeded_rng(seed, "vqa-jsonl", split)
            splits[split] = []
            for _ in range(count):
                document = render_document(rng, image_size)
                field = rng.choice(document.fields)
                splits[split].append(
                    (
                        document.image,
                        {"question": rng.choice(field.questions), "answers": list(field.answers)},
                    )
                )
        _write_jsonl_dataset(folder, splits)

    return build_once(
        out_dir, "write_synthetic_vqa_jsonl", args, ["images", "train.jsonl", "validation.jsonl"], write
    )


def write_synthetic_detection(
    out_dir: str | os.PathLike[str],
    num_train: int = 32,
    num_validation: int = 8,
    image_size: ImageSize = (256, 256),
    seed: int = 0,
) -> Path:
    """A user's own detection data: ``images/*.png`` with 1-4 non-overlapping rectangles, circles and
    triangles plus ``train.jsonl``/``validation.jsonl`` lines ``{"id", "image", "objects": [{"bbox": [x0, y0,
    x1, y1], "label"}]}``; boxes are tight, in pixels, with exclusive x1/y1 (x1 - x0 is the shape's width)."""
    args = {"num_train": num_train, "num_validation": num_validation, "image_size": image_size, "seed": seed}

    def write(folder: Path) -> None:
        splits: dict[str, list[tuple[PILImage.Image, dict[str, Any]]]] = {}
        for split, count in (("train", num_train), ("validation", num_validation)):
            rng = seeded_rng(seed, "detection", split)
            splits[split] = []
            for _ in range(count):
                shapes = render_shapes(rng, image_size)
                objects = [{"bbox": list(shape.bbox), "label": shape.label} for shape in shapes.objects]
                splits[split].append((shapes.image, {"objects": objects}))
        _write_jsonl_dataset(folder, splits)

    return build_once(
        out_dir, "write_synthetic_detection", args, ["images", "train.jsonl", "validation.jsonl"], write
    )
