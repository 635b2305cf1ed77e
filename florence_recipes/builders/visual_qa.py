"""A synthetic visual-QA set whose answers are only in the pixels, in the ``HuggingFaceM4/DocumentVQA`` layout.

Memorising a few examples proves little: a model can overfit them through the question text alone, and a
training path that pairs image features with the wrong question (dedup, feature cache, DDP, ZeRO) still
passes. Here every image is one large shape on a coloured background, and each image gets the same
questions (by default the background's colour, the shape's colour, which half holds the shape; optionally
the shape's kind). The question text is identical for all images, and the two colours of an image always
differ, so a model that ignores the pixels learns the most frequent training answer per question
(:func:`most_frequent_answer_baseline`, about 0.3 ANLS; none can beat the best single answer per question,
:func:`image_blind_baseline`), and one that mixes up the questions of an image scores 0 on them; scoring
well on images never seen in training means that the pixels reached the question they belong to.

Why these attributes: a random-initialised Florence-2 learns first what varies most between images. Colours
that fill a large part of the image, and the half the shape lies in, are learned by the 0.69M-parameter tiny
model in minutes on 2 CPU cores; small shapes on one shared background, or questions that name one cell of a
grid (each needs attention routed by position, which the random model barely encodes), stayed at the
image-blind answer for thousands of steps (measurements in ``recipes/docvqa/learn_tiny.yaml``).

``task: docvqa`` reads the folder unchanged (``data/{split}-00000-of-00001.parquet`` with
:data:`DOCVQA_FEATURES`). ``control="blank"`` / ``"shuffled"`` write the image-blind control: the same rows
with every image blanked, or with the training images shuffled between images (validation keeps the real
ones). A fresh held-out split is one call with another seed and no training images::

    write_synthetic_visual_qa("heldout-seed7", num_train_images=0, num_validation_images=300, seed=7)
    python -m florence_recipes.builders.visual_qa heldout-seed7 --num-train-images 0 --seed 7
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from florence_recipes.builders.datasets import (
    DOCVQA_FEATURES,
    DOCVQA_SPLITS,
    write_docvqa_card,
    write_docvqa_split,
)
from florence_recipes.builders.documents import ImageSize
from florence_recipes.builders.layout import build_once, png_bytes, seeded_rng

# Saturated colours far apart in RGB, and names far apart in edit distance (no partial ANLS credit between
# them), so a wrong guess scores 0.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 38, 38),
    "green": (22, 163, 74),
    "blue": (37, 99, 235),
    "yellow": (234, 179, 8),
    "purple": (147, 51, 234),
}
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("left", "right")  # the half of the image that holds the shape
BLANK = (255, 255, 255)  # the blank control's image: no colour, no shape
# One fixed wording per question type: the text says which attribute, never its value.
QUESTIONS = {
    "background": "What colour is the background?",
    "colour": "What colour is the shape?",
    "position": "Where is the shape?",
    "shape": "What shape is it?",
}
DEFAULT_QUESTIONS = ("background", "colour", "position")  # "shape" is learned far more slowly (see above)
CONTROLS = ("blank", "shuffled")


@dataclass(frozen=True)
class Scene:
    background: str
    colour: str
    shape: str
    position: str

    def answer(self, question_type: str) -> str:
        return getattr(self, question_type)


def render_scene(rng: random.Random, image_size: ImageSize) -> tuple[Image.Image, Scene]:
    """One shape (40-50 % of the image's width) inside the left or right half, on a background of another
    colour; its kind, size and vertical place vary too."""
    width, height = image_size
    background, colour = rng.sample(list(COLOURS), 2)
    scene = Scene(background, colour, rng.choice(SHAPES), rng.choice(POSITIONS))
    image = Image.new("RGB", image_size, COLOURS[background])
    side = rng.randint(round(0.4 * min(width, height)), min(width // 2, round(0.5 * height)))
    x0 = POSITIONS.index(scene.position) * (width // 2) + rng.randint(0, width // 2 - side)
    y0 = rng.randint(0, height - side)
    box = (x0, y0, x0 + side - 1, y0 + side - 1)
    draw = ImageDraw.Draw(image)
    fill = COLOURS[colour]
    if scene.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif scene.shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([((box[0] + box[2]) / 2, box[1]), (box[0], box[3]), (box[2], box[3])], fill=fill)
    return image, scene


def _scenes(
    counts: dict[str, int], image_size: ImageSize, seed: int
) -> dict[str, list[tuple[Image.Image, Scene]]]:
    """Every split's images; an image drawn twice (same pixels) is redrawn, so splits never share one."""
    seen: set[bytes] = set()
    out: dict[str, list[tuple[Image.Image, Scene]]] = {}
    for split, count in counts.items():
        rng = seeded_rng(seed, "visual-qa", split)
        out[split] = []
        while len(out[split]) < count:
            image, scene = render_scene(rng, image_size)
            digest = hashlib.sha256(image.tobytes()).digest()
            if digest not in seen:
                seen.add(digest)
                out[split].append((image, scene))
    return out


def _write_scenes(
    folder: Path,
    scenes: dict[str, list[tuple[Image.Image, Scene]]],
    asked: dict[str, str],
    image_size: ImageSize,
    seed: int,
    control: str | None,
) -> None:
    """The DocumentVQA-layout splits and card: one row per (image, asked question)."""
    splits: dict[str, dict[str, int]] = {}
    sizes: dict[str, int] = {}
    blank = {"bytes": png_bytes(Image.new("RGB", image_size, BLANK)), "path": None}
    doc_id, question_id = 1000, 50000
    for split in (split for split in DOCVQA_SPLITS if split in scenes):
        images = [{"bytes": png_bytes(image), "path": None} for image, _ in scenes[split]]
        if control == "blank":
            images = [blank] * len(images)
        elif control == "shuffled" and split == "train":
            seeded_rng(seed, "visual-qa-shuffle").shuffle(images)
        hidden = split == "test"
        rows: dict[str, list[Any]] = {name: [] for name in DOCVQA_FEATURES}
        for image, (_, scene) in zip(images, scenes[split], strict=True):
            for question_type, question in asked.items():
                rows["questionId"].append(question_id)
                rows["question"].append(question)
                rows["question_types"].append(None if hidden else [question_type])
                rows["image"].append(image)
                rows["docId"].append(doc_id)
                rows["ucsf_document_id"].append(f"shape{doc_id:05d}")
                rows["ucsf_document_page_no"].append("1")
                rows["answers"].append(None if hidden else [scene.answer(question_type)])
                question_id += 1
            doc_id += 1
        splits[split], sizes[split] = write_docvqa_split(folder, split, rows)
    body = (
        "Synthetic visual QA in the `HuggingFaceM4/DocumentVQA` layout, written offline by "
        "`florence_recipes.builders.visual_qa`: one coloured shape per image on a background of another "
        f"colour, questions ({', '.join(asked)}), answers only in the pixels. Control: {control or 'none'}."
    )
    write_docvqa_card(folder, "Synthetic visual QA", body, splits, sizes)


def write_synthetic_visual_qa(
    out_dir: str | os.PathLike[str],
    num_train_images: int = 1200,
    num_validation_images: int = 150,
    num_test_images: int = 0,
    image_size: ImageSize = (64, 64),
    seed: int = 0,
    control: str | None = None,
    questions: Sequence[str] = DEFAULT_QUESTIONS,
) -> Path:
    """A DocumentVQA-layout folder of shape scenes with the ``questions`` (keys of :data:`QUESTIONS`, by default
    :data:`DEFAULT_QUESTIONS`) asked about every image (see the module docstring).

    Deterministic for the arguments; splits with 0 images are left out; the test split's ``answers`` and
    ``question_types`` are null as on the Hub. ``control``: None (real images), ``"blank"`` (every image a
    plain white one) or ``"shuffled"`` (training images permuted between images; other splits real).
    """
    counts = {"train": num_train_images, "validation": num_validation_images, "test": num_test_images}
    if min(counts.values()) < 0 or sum(counts.values()) == 0:
        raise ValueError(f"image counts must be >= 0 and not all 0, got {counts}")
    if control is not None and control not in CONTROLS:
        raise ValueError(f"control={control!r} is not one of: {', '.join(CONTROLS)} (or None)")
    if min(image_size) < 24:
        raise ValueError(f"image_size must be at least 24 x 24 pixels, got {image_size}")
    unknown = [kind for kind in questions if kind not in QUESTIONS]
    if unknown or not questions:
        raise ValueError(f"questions {unknown or list(questions)}: choose from {', '.join(QUESTIONS)}")
    asked = {kind: QUESTIONS[kind] for kind in dict.fromkeys(questions)}
    args = {**{f"num_{split}_images": n for split, n in counts.items()}, "image_size": image_size}
    args |= {"seed": seed, "control": control, "questions": list(asked)}

    def write(folder: Path) -> None:
        scenes = _scenes({split: n for split, n in counts.items() if n}, image_size, seed)
        _write_scenes(folder, scenes, asked, image_size, seed, control)

    return build_once(out_dir, "write_synthetic_visual_qa", args, ["data", "README.md"], write)


def visual_qa_options(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The set a dataset folder's name asks for, as keyword arguments of :func:`write_synthetic_visual_qa`; None
    when the name does not contain ``visual-qa``. How ``build_offline_fixtures`` picks it for ``task: docvqa``:
    ``visual-qa`` is the default set, a question name after it keeps only the named questions
    (``visual-qa-background``: the background's colour alone, what the smoke recipe learns in a minute), and
    ``-blank`` / ``-shuffled`` at the end ask for that control."""
    name = Path(folder).name.lower()
    if "visual-qa" not in name:
        return None
    words = name.split("visual-qa", 1)[1].split("-")
    questions = [word for word in words if word in QUESTIONS]
    control = next((control for control in CONTROLS if name.endswith(f"-{control}")), None)
    return {"control": control, "questions": tuple(questions) or DEFAULT_QUESTIONS}


def image_blind_baseline(questions: Sequence[str], answers: Sequence[Sequence[str]]) -> float:
    """ANLS of the best model that never looks at the image, on these questions: per question text, the one
    answer (from its gold answers) that scores most on that question's items. An image-blind model gives one
    answer per question text, so none can score more; a model that does reads the pixels."""
    from florence_recipes.evaluation.metrics import anls

    if len(questions) != len(answers):
        raise ValueError("questions and answers must have the same length")
    by_question: dict[str, list[list[str]]] = {}
    for question, golds in zip(questions, answers, strict=True):
        by_question.setdefault(question.strip(), []).append(list(golds))
    total = 0.0
    for items in by_question.values():
        candidates = Counter(gold for golds in items for gold in golds)
        total += max(anls([answer] * len(items), items) * len(items) for answer in candidates)
    return total / len(questions)


def most_frequent_answer_baseline(
    train_questions: Sequence[str],
    train_answers: Sequence[Sequence[str]],
    questions: Sequence[str],
    answers: Sequence[Sequence[str]],
) -> float:
    """ANLS on (questions, answers) of answering every question text with its most frequent training target
    (the first gold answer, which the recipe trains on): what a model that ignores the image learns, so the
    score a blank-image control should land on. :func:`image_blind_baseline` is the ceiling above it."""
    from florence_recipes.evaluation.metrics import anls

    targets: dict[str, Counter[str]] = {}
    for question, golds in zip(train_questions, train_answers, strict=True):
        if golds:
            targets.setdefault(question.strip(), Counter())[golds[0]] += 1
    # A question text never seen in training gets no answer (scores 0), as a blind model could not know it.
    guesses = [targets[q.strip()].most_common(1)[0][0] if q.strip() in targets else "" for q in questions]
    return anls(guesses, [list(golds) for golds in answers])


def _split_questions(dataset_dir: str | os.PathLike[str], split: str) -> tuple[list[str], list[list[str]]]:
    import datasets  # deferred, like the metrics

    files = sorted((Path(dataset_dir) / "data").glob(f"{split}-*.parquet"))
    if not files:
        raise FileNotFoundError(f"{dataset_dir}: no data/{split}-*.parquet")
    rows = datasets.Dataset.from_parquet([str(f) for f in files], columns=["question", "answers"])
    return rows["question"], [golds or [] for golds in rows["answers"]]


def dataset_image_blind_baseline(dataset_dir: str | os.PathLike[str], split: str = "validation") -> float:
    """:func:`image_blind_baseline` of a split of a DocumentVQA-layout folder (this builder's or the Hub's)."""
    return image_blind_baseline(*_split_questions(dataset_dir, split))


def dataset_most_frequent_answer_baseline(
    dataset_dir: str | os.PathLike[str], split: str = "validation", train_split: str = "train"
) -> float:
    """:func:`most_frequent_answer_baseline` of a DocumentVQA-layout folder: trained on `train_split`,
    scored on `split`."""
    return most_frequent_answer_baseline(
        *_split_questions(dataset_dir, train_split), *_split_questions(dataset_dir, split)
    )


SMOKE_COMMAND = "accelerate launch recipes/docvqa.py --config recipes/docvqa/smoke.yaml"
LEARN_COMMAND = "accelerate launch recipes/docvqa.py --config recipes/docvqa/learn_tiny.yaml"


def offline_result_note(dataset_dir: str | os.PathLike[str], eval_anls: float) -> str:
    """The last line of a run on offline fixtures: what its eval_anls means. On this visual-QA set, the
    image-blind baseline it must beat; on the other synthetic sets (a few memorisable documents), that the
    number checks the pipeline, not learning, and which command shows learning."""
    if visual_qa_options(dataset_dir) is not None:
        try:
            most_frequent = dataset_most_frequent_answer_baseline(dataset_dir)
            best = dataset_image_blind_baseline(dataset_dir)
        except FileNotFoundError:  # evaluated on another split than validation
            return f"held-out eval_anls {eval_anls:.4f} on synthetic visual QA"
        return (
            f"held-out eval_anls {eval_anls:.4f} on synthetic visual QA; image-blind baseline (the most frequent "
            f"training answer per question) {most_frequent:.4f}, and no model that ignores the image can exceed "
            f"{best:.4f}: only a model that reads the pixels gets clearly above them"
        )
    return (
        f"eval_anls {eval_anls:.4f} checks the pipeline (random tiny model, a few synthetic documents), not "
        f"learning; held-out checks of learning from pixels: {SMOKE_COMMAND} (about a minute on 2 CPU cores), "
        f"{LEARN_COMMAND} (three questions, about 10 min)"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=write_synthetic_visual_qa.__doc__.split("\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--num-train-images", type=int, default=1200)
    parser.add_argument("--num-validation-images", type=int, default=150)
    parser.add_argument("--num-test-images", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=64, help="square side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--control", choices=CONTROLS, default=None)
    parser.add_argument("--questions", nargs="+", choices=list(QUESTIONS), default=list(DEFAULT_QUESTIONS))
    args = parser.parse_args(argv)
    out = write_synthetic_visual_qa(
        args.out_dir,
        args.num_train_images,
        args.num_validation_images,
        args.num_test_images,
        (args.image_size, args.image_size),
        args.seed,
        args.control,
        args.questions,
    )
    print(out)
    if args.num_train_images and args.num_validation_images:
        print(
            f"image-blind baseline (validation ANLS): most frequent training answer per question "
            f"{dataset_most_frequent_answer_baseline(out):.4f}, best single answer {dataset_image_blind_baseline(out):.4f}"
        )


if __name__ == "__main__":
    main()
