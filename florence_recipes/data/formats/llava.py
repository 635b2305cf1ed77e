"""LLaVA / ShareGPT conversations: a JSON list (LLaVA's `llava_instruct_150k.json` layout) or JSON lines of
`{"id", "image", "conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": "..."}]}`,
image paths relative to the file's folder. Read as the `vqa` task: each human -> gpt turn is one example, the
human text (the `<image>` placeholder removed) the prompt as is, as The Cauldron's turns are.

`dataset_name` is the file (every split reads it: slice it, e.g. train[:90%]), or a folder of `<split>.json` /
`<split>.jsonl` files (or of one such file). Rows without an image (text-only chat), with several images, turns
without an answer and system turns are skipped and counted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from florence_recipes.data.formats.common import (
    IMAGE_COUNTS,
    Format,
    FormatSplit,
    checked_image,
    image_path,
    json_lines,
    load_json,
    no_split_error,
    relative,
    split_names,
)
from florence_recipes.errors import RecipeError

SUFFIXES = (".json", ".jsonl")
IMAGE_PLACEHOLDER = "<image>"
_QUESTION_ROLES, _ANSWER_ROLES = ("human", "user"), ("gpt", "assistant")
_HEAD_BYTES = 1 << 16


def _is_conversations_file(path: Path) -> bool:
    """A JSON list or JSON lines whose first record has `conversations` (read from the file's head only)."""
    if path.suffix not in SUFFIXES or not path.is_file():
        return False
    with open(path, encoding="utf-8", errors="replace") as file:
        head = file.read(_HEAD_BYTES)
    start = head.lstrip()
    first = start.split("\n", 1)[0] if path.suffix == ".jsonl" else start
    return start[:1] in ("[", "{") and '"conversations"' in first


def _conversation_files(folder: Path) -> list[Path]:
    return [path for path in sorted(folder.iterdir()) if _is_conversations_file(path)]


def detect(path: Path) -> bool:
    return _is_conversations_file(path) or (path.is_dir() and bool(_conversation_files(path)))


def conversations_file(root: Path, split: str) -> Path:
    if root.is_file():
        return root
    files = _conversation_files(root)
    if len(files) == 1:
        return files[0]
    candidates = [root / f"{name}{suffix}" for name in split_names(split) for suffix in SUFFIXES]
    found = next((path for path in candidates if path in files), None)
    if found is None:
        raise no_split_error(root, split, [relative(path, root) for path in candidates])
    return found


def _records(path: Path, root: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, record): `file line N` for JSON lines, `file record N` (0-based, as in the list) for JSON."""
    name = relative(path, root)
    if path.suffix == ".jsonl":
        for number, row in json_lines(path, root):
            yield f"{name} line {number}", row
        return
    data = load_json(path, root)
    if not isinstance(data, list):
        raise RecipeError(f"{name}: expected a JSON list of conversations, got {type(data).__name__}")
    for index, row in enumerate(data):
        if not isinstance(row, dict):
            raise RecipeError(f"{name} record {index}: expected a JSON object, got {row!r:.60}")
        yield f"{name} record {index}", row


def _turns(conversations: Any, where: str, counts: Counter[str]) -> list[tuple[str, str]]:
    """(question, answer) for each human turn followed by a gpt turn; the others are counted."""
    if not isinstance(conversations, list):
        raise RecipeError(f"{where}: `conversations` must be a list of {{from, value}}")
    pairs, question = [], None
    for number, turn in enumerate(conversations):
        if not (
            isinstance(turn, dict)
            and isinstance(turn.get("from"), str)
            and isinstance(turn.get("value"), str)
        ):
            raise RecipeError(
                f"{where}: conversations[{number}] must be {{from: str, value: str}}, got {turn!r:.80}"
            )
        role = turn["from"].lower()
        if role in _QUESTION_ROLES:
            counts["skipped_unanswered_turns"] += question is not None
            question = turn["value"].replace(IMAGE_PLACEHOLDER, "").strip()
        elif role in _ANSWER_ROLES and question is not None:
            pairs.append((question, turn["value"].strip()))
            question = None
        elif role == "system":
            counts["skipped_system_turns"] += 1
        else:
            raise RecipeError(
                f"{where}: conversations[{number}] has from={turn['from']!r} where a human turn belongs"
            )
    counts["skipped_unanswered_turns"] += question is not None
    return pairs


def _image_name(value: Any, where: str, counts: Counter[str]) -> Any:
    if isinstance(value, list):  # ShareGPT variants list the images; Florence-2 reads one
        if len(value) != 1:
            counts["skipped_rows_without_image" if not value else "skipped_multi_image_rows"] += 1
            return None
        value = value[0]
    if value is None:
        counts["skipped_rows_without_image"] += 1
    return value


def read(root: Path, split: str, skip_bad_images: bool) -> FormatSplit:
    path = conversations_file(root, split)
    counts: Counter[str] = Counter({reason: 0 for reason in FORMAT.counts})
    rows = []
    for where, record in _records(path, root):
        pairs = _turns(record.get("conversations"), where, counts)
        name = _image_name(record.get("image"), where, counts)
        if name is None:
            continue
        image = image_path(path.parent, name, where)
        if checked_image(image, where, skip_bad_images, counts) is None:
            continue
        for number, (question, answer) in enumerate(pairs, start=1):
            rows.append(
                {"id": f"{where} turn {number}", "image": str(image), "prompt": question, "answers": [answer]}
            )
    if not rows:
        raise RecipeError(f"{relative(path, root)}: no human -> gpt turn with an image")
    return FormatSplit(task="vqa", rows=rows, counts=dict(counts), file=path)


FORMAT = Format(
    name="llava",
    layout="LLaVA / ShareGPT conversations (a .json list or .jsonl of {image, conversations})",
    detect=detect,
    read=read,
    task="vqa",
    counts=(
        *IMAGE_COUNTS,
        "skipped_rows_without_image",
        "skipped_multi_image_rows",
        "skipped_unanswered_turns",
        "skipped_system_turns",
    ),
)
