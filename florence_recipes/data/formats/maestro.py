"""maestro / Roboflow "Florence-2" JSONL: `train/`, `valid/`, `test/` folders (or one folder), each holding
`annotations.jsonl` lines `{"image", "prefix", "suffix"}` with the images beside it.

A folder whose rows have the prefix `<OD>` is object detection: each suffix must be `label<loc_x0><loc_y0><loc_x1>
<loc_y1>...`, read back to pixel boxes so the `detection` task writes and scores it (mAP after
`post_process_generation`). Any other prefix is text: the `vqa` task, the prefix as the prompt, the suffix as the
answer (ANLS, Levenshtein). A split mixing the two fails naming a line of each.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

from florence_recipes.data.boxes import NUM_BINS
from florence_recipes.data.formats.common import (
    IMAGE_COUNTS,
    Format,
    FormatSplit,
    checked_image,
    image_path,
    json_lines,
    no_split_error,
    relative,
    split_names,
)
from florence_recipes.errors import RecipeError

ANNOTATIONS = "annotations.jsonl"  # maestro's JSONLDataset.ROBOFLOW_JSONL_FILENAME
DETECTION_PREFIX = "<OD>"
_OBJECT = re.compile(r"([^<]+)<loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)>")
_OBJECTS = re.compile(rf"(?:{_OBJECT.pattern})*")


def detect(path: Path) -> bool:
    if not path.is_dir():
        return False
    return (path / ANNOTATIONS).is_file() or any(
        (child / ANNOTATIONS).is_file() for child in _subfolders(path)
    )


def _subfolders(path: Path) -> list[Path]:
    return [child for child in sorted(path.iterdir()) if child.is_dir()]


def annotation_file(root: Path, split: str) -> Path:
    """One folder serves every split (slice it); otherwise `<split>/annotations.jsonl`, `valid` for validation."""
    if (root / ANNOTATIONS).is_file():
        return root / ANNOTATIONS
    candidates = [root / name / ANNOTATIONS for name in split_names(split)]
    found = next((path for path in candidates if path.is_file()), None)
    if found is None:
        raise no_split_error(root, split, [relative(path, root) for path in candidates])
    return found


def _objects(suffix: str, size: tuple[int, int], where: str, counts: Counter[str]) -> list[dict[str, Any]]:
    """`label<loc_x0><loc_y0><loc_x1><loc_y1>...` -> pixel boxes at the centres of the bins, which quantise
    back to the same bins. maestro rounds coordinates, so it may write bin 1000: read as the last bin (999)."""
    if not _OBJECTS.fullmatch(suffix):
        raise RecipeError(
            f"{where}: prefix {DETECTION_PREFIX} needs a suffix of label<loc_x0><loc_y0><loc_x1><loc_y1>... "
            f"objects, got {suffix[:80]!r}"
        )
    width, height = size
    objects = []
    for match in _OBJECT.finditer(suffix):
        label = match[1].strip()
        x0, y0, x1, y1 = (min(int(value), NUM_BINS - 1) for value in match.groups()[1:])
        if x1 < x0 or y1 < y0:
            raise RecipeError(f"{where}: box of {label!r} has x1 < x0 or y1 < y0: {match[0]}")
        if x1 == x0 or y1 == y0:
            counts["skipped_zero_area_boxes"] += 1
            continue
        box = [(x0 + 0.5) * width, (y0 + 0.5) * height, (x1 + 0.5) * width, (y1 + 0.5) * height]
        objects.append({"bbox": [v / NUM_BINS for v in box], "label": label})
    return objects


def read(root: Path, split: str, skip_bad_images: bool) -> FormatSplit:
    path = annotation_file(root, split)
    name = relative(path, root)
    rows: dict[str, list[dict[str, Any]]] = {"detection": [], "vqa": []}
    first_line: dict[str, int] = {}
    counts: Counter[str] = Counter({reason: 0 for reason in FORMAT.counts})
    for number, row in json_lines(path, root):
        where = f"{name} line {number}"
        missing = [key for key in ("image", "prefix", "suffix") if not isinstance(row.get(key), str)]
        if missing:
            raise RecipeError(
                f"{where}: {', '.join(missing)} missing or not a string (keys: image, prefix, suffix)"
            )
        image = image_path(path.parent, row["image"], where)
        size = checked_image(image, where, skip_bad_images, counts)
        if size is None:
            continue
        task = "detection" if row["prefix"].strip() == DETECTION_PREFIX else "vqa"
        first_line.setdefault(task, number)
        converted = {"id": f"{name}:{number}", "image": str(image)}
        if task == "detection":
            converted["objects"] = _objects(row["suffix"], size, where, counts)
        else:
            converted |= {"prompt": row["prefix"], "answers": [row["suffix"]]}
        rows[task].append(converted)
    if len(first_line) > 1:
        raise RecipeError(
            f"{name}: mixes {DETECTION_PREFIX} detection rows (line {first_line['detection']}) with text rows "
            f"(line {first_line['vqa']}); put each task in a folder of its own"
        )
    if not first_line and not sum(counts.values()):
        raise RecipeError(f"{name}: no rows")
    task = next(iter(first_line), "vqa")
    return FormatSplit(task=task, rows=rows[task], counts=dict(counts), file=path)


FORMAT = Format(
    name="maestro",
    layout=f"maestro / Roboflow Florence-2 JSONL ({{train,valid,test}}/{ANNOTATIONS} or {ANNOTATIONS})",
    detect=detect,
    read=read,
    task=None,
    counts=(*IMAGE_COUNTS, "skipped_zero_area_boxes"),
)
