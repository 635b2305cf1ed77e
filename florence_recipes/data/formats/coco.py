"""COCO detection JSON: a Roboflow export (`train/_annotations.coco.json`, `valid/...`, `test/...`, images beside
each file) or plain COCO (`annotations/instances_<split>.json` with the images in a folder named like the file,
e.g. `train2017/` or `images/train2017/`). Read as the `detection` task: category names become labels.

Crowd boxes (`iscrowd`) and zero-area boxes are skipped, boxes reaching outside the image are clipped to it, and
each is counted. Roboflow writes one more category, id 0, named after the project with supercategory "none":
the superclass of the others, which no box uses; only the categories that boxes use become labels.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from florence_recipes.data.formats.common import (
    IMAGE_COUNTS,
    Format,
    FormatSplit,
    checked_image,
    image_path,
    load_json,
    no_split_error,
    relative,
    split_names,
)
from florence_recipes.errors import RecipeError

ROBOFLOW_FILE = "_annotations.coco.json"
ANNOTATIONS_FOLDER = "annotations"  # plain COCO: annotations/instances_train2017.json


def detect(path: Path) -> bool:
    if not path.is_dir():
        return False
    roboflow = (path / ROBOFLOW_FILE).is_file() or any(
        (child / ROBOFLOW_FILE).is_file() for child in path.iterdir() if child.is_dir()
    )
    return roboflow or any((path / ANNOTATIONS_FOLDER).glob("instances_*.json"))


def _plain_coco_file(root: Path, split: str) -> tuple[Path, Path] | None:
    """(annotation file, image folder): `instances_<split>.json`, else the one `instances_<split>*.json`
    (val -> instances_val2017.json); images in `<name>/`, `images/<name>/` or `images/`."""
    folder = root / ANNOTATIONS_FOLDER
    for name in split_names(split):
        exact = folder / f"instances_{name}.json"
        found = [exact] if exact.is_file() else sorted(folder.glob(f"instances_{name}*.json"))
        if len(found) > 1:
            raise RecipeError(
                f"{root}: split {split!r} matches {', '.join(p.name for p in found)}; name one, e.g. "
                f"{found[0].stem.removeprefix('instances_')}"
            )
        if found:
            stem = found[0].stem.removeprefix("instances_")
            images = (root / stem, root / "images" / stem, root / "images")
            return found[0], next((path for path in images if path.is_dir()), root)
    return None


def annotation_file(root: Path, split: str) -> tuple[Path, Path]:
    """(annotation file, image folder) of `split`."""
    if (root / ROBOFLOW_FILE).is_file():  # one exported folder serves every split (slice it)
        return root / ROBOFLOW_FILE, root
    candidates = [root / name / ROBOFLOW_FILE for name in split_names(split)]
    found = next((path for path in candidates if path.is_file()), None)
    if found is not None:
        return found, found.parent
    plain = _plain_coco_file(root, split)
    if plain is None:
        looked = [relative(path, root) for path in candidates] + [
            f"{ANNOTATIONS_FOLDER}/instances_{split}*.json"
        ]
        raise no_split_error(root, split, looked)
    return plain


def _box(
    annotation: dict[str, Any], size: tuple[int, int], where: str, counts: Counter[str]
) -> list[float] | None:
    """A COCO `[x, y, width, height]` as `[x0, y0, x1, y1]` clipped to the image, or None when skipped."""
    bbox = annotation.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, int | float) for v in bbox)):
        raise RecipeError(f"{where}: bbox must be [x, y, width, height] in pixels, got {bbox!r}")
    x, y, w, h = bbox
    if w < 0 or h < 0:
        raise RecipeError(f"{where}: negative width or height (x1 < x0 or y1 < y0): bbox {bbox}")
    if annotation.get("iscrowd"):
        counts["skipped_crowd_boxes"] += 1
        return None
    if w == 0 or h == 0:
        counts["skipped_zero_area_boxes"] += 1
        return None
    width, height = size
    box = [
        min(max(x, 0), width),
        min(max(y, 0), height),
        min(max(x + w, 0), width),
        min(max(y + h, 0), height),
    ]
    if box[0] >= box[2] or box[1] >= box[3]:
        counts["skipped_boxes_outside_image"] += 1
        return None
    if box != [x, y, x + w, y + h]:
        counts["clipped_boxes"] += 1
    return box


def _tables(data: Any, name: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[Any, str]]:
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), list) for k in ("images", "annotations")
    ):
        raise RecipeError(f"{name}: not a COCO file (needs lists `images`, `annotations` and `categories`)")
    categories = data.get("categories")
    if not isinstance(categories, list) or not all(isinstance(c, dict) and "id" in c for c in categories):
        raise RecipeError(f"{name}: `categories` must be a list of {{id, name}}")
    return data["images"], data["annotations"], {c["id"]: str(c.get("name", "")) for c in categories}


def read(root: Path, split: str, skip_bad_images: bool) -> FormatSplit:
    path, image_folder = annotation_file(root, split)
    name = relative(path, root)
    images, annotations, categories = _tables(load_json(path, root), name)
    counts: Counter[str] = Counter({reason: 0 for reason in FORMAT.counts})
    files: dict[Any, Path] = {}
    sizes: dict[Any, tuple[int, int] | None] = {}
    for image in images:
        where = f"{name} image {image.get('id')}"
        files[image.get("id")] = image_path(image_folder, image.get("file_name"), where)
        sizes[image.get("id")] = checked_image(files[image.get("id")], where, skip_bad_images, counts)
    objects: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for annotation in annotations:
        image_id = annotation.get("image_id")
        where = f"{name} annotation {annotation.get('id')} (image {image_id})"
        if image_id not in files:
            raise RecipeError(f"{where}: image_id {image_id!r} is not in `images`")
        if annotation.get("category_id") not in categories:
            known = ", ".join(map(str, categories))
            raise RecipeError(
                f"{where}: unknown category_id {annotation.get('category_id')!r} (categories: {known})"
            )
        size = sizes[image_id]
        box = None if size is None else _box(annotation, size, where, counts)
        if box is not None:
            objects[image_id].append({"bbox": box, "label": categories[annotation["category_id"]]})
    rows = [
        {"id": f"{name} image {image_id}", "image": str(files[image_id]), "objects": objects[image_id]}
        for image_id, size in sizes.items()
        if size is not None
    ]
    return FormatSplit(task="detection", rows=rows, counts=dict(counts), file=path)


FORMAT = Format(
    name="coco",
    layout=f"COCO detection (Roboflow {{train,valid,test}}/{ROBOFLOW_FILE}, or "
    f"{ANNOTATIONS_FOLDER}/instances_<split>.json + an image folder)",
    detect=detect,
    read=read,
    task="detection",
    counts=(
        *IMAGE_COUNTS,
        "skipped_crowd_boxes",
        "skipped_zero_area_boxes",
        "skipped_boxes_outside_image",
        "clipped_boxes",
    ),
)
