"""Small datasets in other Florence-2 tools' own layouts (file names and keys as those tools write them), whose
answers are in the pixels: `florence_recipes.data.formats` reads them as they are.

* :func:`write_maestro_jsonl` - maestro / Roboflow "Florence-2" JSONL: ``{train,valid,test}/annotations.jsonl``
  lines ``{"image", "prefix", "suffix"}``, Roboflow-named JPEGs beside them; visual QA (the question as prefix)
  or ``<OD>`` detection (``label<loc_x0><loc_y0><loc_x1><loc_y1>`` suffixes, rounded as maestro rounds).
* :func:`write_coco_detection` - a Roboflow COCO export (``{train,valid,test}/_annotations.coco.json``, with its
  category 0 superclass) or plain COCO (``annotations/instances_{train,val}2017.json`` + ``train2017/``,
  ``val2017/``). The train split also holds one crowd box, one zero-area box and one box reaching outside
  its image: the reader skips or clips and counts them.
* :func:`write_llava_conversations` - LLaVA's JSON list ``{"id", "image", "conversations": [{"from": "human",
  "value": "<image>\\n..."}, {"from": "gpt", "value": ...}, ...]}``: ``train.json`` and ``validation.json``
  with ``images/`` beside them, one image with three question turns per record.

    python -m florence_recipes.builders.formats maestro data/maestro-vqa
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from PIL import Image

from florence_recipes.builders.documents import ImageSize
from florence_recipes.builders.figures import RenderedShapes, render_shapes
from florence_recipes.builders.layout import build_once, seeded_rng
from florence_recipes.builders.visual_qa import DEFAULT_QUESTIONS, QUESTIONS, Scene, render_scene

SPLITS = ("train", "valid", "test")  # Roboflow's and maestro's split folders
SHAPE_LABELS = ("rectangle", "circle", "triangle")
ROBOFLOW_SUPERCLASS = "shapes"  # Roboflow's category 0: the project, supercategory "none"


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _roboflow_name(index: int, data: bytes) -> str:
    """Roboflow renames uploads `<stem>_<ext>.rf.<hash>.jpg`."""
    return f"image_{index:04d}_png.rf.{hashlib.md5(data).hexdigest()}.jpg"


def _scenes(
    rng: random.Random, count: int, image_size: ImageSize, seen: set[bytes]
) -> Iterator[tuple[bytes, Scene]]:
    """`count` scenes as JPEG bytes, none repeating another split's (`seen` is shared between splits)."""
    made = 0
    while made < count:
        image, scene = render_scene(rng, image_size)
        data = _jpeg(image)
        if data not in seen:
            seen.add(data)
            made += 1
            yield data, scene


def _maestro_boxes(shapes: RenderedShapes, image_size: ImageSize) -> str:
    """maestro's `boxes_to_text`: each coordinate divided by the side, times 1000, rounded; annotation order."""
    width, height = image_size
    scale = (width, height, width, height)
    return "".join(
        shape.label
        + "".join(f"<loc_{round(v / side * 1000)}>" for v, side in zip(shape.bbox, scale, strict=True))
        for shape in shapes.objects
    )


def write_maestro_jsonl(
    out_dir: str | os.PathLike[str],
    task: str = "vqa",
    counts: Sequence[int] = (24, 8, 4),
    image_size: ImageSize = (128, 128),
    seed: int = 0,
) -> Path:
    """maestro's layout with `counts` images in train / valid / test; `task` "vqa" (one line per question about
    a shape scene, prefix the question, suffix the answer) or "detection" (prefix ``<OD>``)."""
    if task not in ("vqa", "detection"):
        raise ValueError(f"task must be vqa or detection, got {task!r}")
    args = {"task": task, "counts": list(counts), "image_size": image_size, "seed": seed}

    def write(folder: Path) -> None:
        seen: set[bytes] = set()
        for split, count in zip(SPLITS, counts, strict=True):
            (folder / split).mkdir()
            rng = seeded_rng(seed, "maestro", task, split)
            lines = []
            if task == "vqa":
                for index, (data, scene) in enumerate(_scenes(rng, count, image_size, seen)):
                    name = _roboflow_name(index, data)
                    (folder / split / name).write_bytes(data)
                    lines += [
                        {"image": name, "prefix": QUESTIONS[kind], "suffix": scene.answer(kind)}
                        for kind in DEFAULT_QUESTIONS
                    ]
            else:
                for index in range(count):
                    shapes = render_shapes(rng, image_size, max_objects=3)
                    data = _jpeg(shapes.image)
                    name = _roboflow_name(index, data)
                    (folder / split / name).write_bytes(data)
                    lines.append(
                        {"image": name, "prefix": "<OD>", "suffix": _maestro_boxes(shapes, image_size)}
                    )
            text = "".join(json.dumps(line) + "\n" for line in lines)
            (folder / split / "annotations.jsonl").write_text(text, encoding="utf-8")

    return build_once(out_dir, "write_maestro_jsonl", args, list(SPLITS), write)


def _coco_split(
    rng: random.Random, count: int, image_size: ImageSize, names: Sequence[str], first_category: int
) -> tuple[dict[str, Any], list[bytes]]:
    """A COCO file's `images` and `annotations` (boxes `[x, y, w, h]`) for `count` shape images, and their JPEGs."""
    images, annotations, files = [], [], []
    for index in range(count):
        shapes = render_shapes(rng, image_size, max_objects=3)
        files.append(_jpeg(shapes.image))
        width, height = image_size
        images.append(
            {"id": index, "license": 1, "file_name": names[index], "height": height, "width": width}
        )
        images[-1]["date_captured"] = "2025-01-01T00:00:00+00:00"
        for shape in shapes.objects:
            x0, y0, x1, y1 = shape.bbox
            annotations.append(
                {
                    "id": len(annotations),
                    "image_id": index,
                    "category_id": first_category + SHAPE_LABELS.index(shape.label),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "segmentation": [],
                    "iscrowd": 0,
                }
            )
    return {"images": images, "annotations": annotations}, files


def _add_bad_boxes(split: dict[str, Any], image_size: ImageSize) -> None:
    """One crowd box, one zero-area box and one box reaching past the right edge, on the first image."""
    width, height = image_size
    base = {
        "image_id": 0,
        "category_id": split["annotations"][0]["category_id"],
        "segmentation": [],
        "area": 0,
    }
    for bbox, crowd in (([2, 2, 10, 10], 1), ([5, 5, 0, 8], 0), ([width - 6, height // 2, 12, 6], 0)):
        split["annotations"].append({**base, "id": len(split["annotations"]), "bbox": bbox, "iscrowd": crowd})


def write_coco_detection(
    out_dir: str | os.PathLike[str],
    layout: str = "roboflow",
    counts: Sequence[int] = (24, 8, 4),
    image_size: ImageSize = (128, 128),
    seed: int = 0,
) -> Path:
    """Shape detection with `counts` images per split, as a Roboflow COCO export (`layout="roboflow"`: train,
    valid, test) or as plain COCO (`layout="coco"`: train2017 and val2017, the third count unused)."""
    if layout not in ("roboflow", "coco"):
        raise ValueError(f"layout must be roboflow or coco, got {layout!r}")
    args = {"layout": layout, "counts": list(counts), "image_size": image_size, "seed": seed}
    info = {"year": "2025", "version": "1", "description": "synthetic shapes", "contributor": "", "url": ""}
    if layout == "roboflow":
        categories = [{"id": 0, "name": ROBOFLOW_SUPERCLASS, "supercategory": "none"}]
        categories += [
            {"id": i + 1, "name": n, "supercategory": ROBOFLOW_SUPERCLASS} for i, n in enumerate(SHAPE_LABELS)
        ]
        splits = {split: (f"{split}/_annotations.coco.json", split) for split in SPLITS}
    else:
        categories = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(SHAPE_LABELS)]
        splits = {s: (f"annotations/instances_{s}2017.json", f"{s}2017") for s in ("train", "val")}
    outputs = sorted({Path(path).parts[0] for pair in splits.values() for path in pair})

    def write(folder: Path) -> None:
        for (split, (annotation_path, image_folder)), count in zip(splits.items(), counts, strict=False):
            rng = seeded_rng(seed, "coco", split)
            if layout == "roboflow":
                names = [
                    f"image_{i:04d}_png.rf.{hashlib.md5(f'{split}{i}'.encode()).hexdigest()}.jpg"
                    for i in range(count)
                ]
            else:
                names = [f"{(split == 'val') * 500000 + i + 1:012d}.jpg" for i in range(count)]
            tables, files = _coco_split(rng, count, image_size, names, first_category=1)
            if split == "train":
                _add_bad_boxes(tables, image_size)
            (folder / image_folder).mkdir(parents=True, exist_ok=True)
            for name, data in zip(names, files, strict=True):
                (folder / image_folder / name).write_bytes(data)
            document = {
                "info": info,
                "licenses": [{"id": 1, "url": "", "name": "CC BY 4.0"}],
                "categories": categories,
            }
            (folder / annotation_path).parent.mkdir(parents=True, exist_ok=True)
            (folder / annotation_path).write_text(json.dumps(document | tables), encoding="utf-8")

    return build_once(out_dir, "write_coco_detection", args, outputs, write)


def write_llava_conversations(
    out_dir: str | os.PathLike[str],
    counts: Sequence[int] = (24, 8),
    image_size: ImageSize = (64, 64),
    seed: int = 0,
) -> Path:
    """``train.json`` and ``validation.json`` in LLaVA's layout, `counts` images each, every record one shape
    scene with a turn per question of :data:`DEFAULT_QUESTIONS`; ``images/<id>.jpg`` beside them."""
    args = {"counts": list(counts), "image_size": image_size, "seed": seed}

    def write(folder: Path) -> None:
        (folder / "images").mkdir()
        seen: set[bytes] = set()
        for split, count in zip(("train", "validation"), counts, strict=True):
            records = []
            rng = seeded_rng(seed, "llava", split)
            for data, scene in _scenes(rng, count, image_size, seen):
                record_id = f"{len(seen):012d}"
                (folder / "images" / f"{record_id}.jpg").write_bytes(data)
                turns = []
                for number, kind in enumerate(DEFAULT_QUESTIONS):
                    question = ("<image>\n" if number == 0 else "") + QUESTIONS[kind]
                    turns += [
                        {"from": "human", "value": question},
                        {"from": "gpt", "value": scene.answer(kind)},
                    ]
                records.append({"id": record_id, "image": f"images/{record_id}.jpg", "conversations": turns})
            (folder / f"{split}.json").write_text(json.dumps(records, indent=1), encoding="utf-8")

    return build_once(
        out_dir, "write_llava_conversations", args, ["images", "train.json", "validation.json"], write
    )


FORMAT_BUILDERS = {
    "maestro": write_maestro_jsonl,
    "maestro-detection": partial(write_maestro_jsonl, task="detection"),
    "roboflow-coco": write_coco_detection,
    "coco": partial(write_coco_detection, layout="coco"),
    "llava": write_llava_conversations,
}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a small dataset in another Florence-2 tool's layout.")
    parser.add_argument("kind", choices=sorted(FORMAT_BUILDERS))
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--counts", type=int, nargs="+", help="images per split (train, valid[, test])")
    args = parser.parse_args(argv)
    extra = {"counts": args.counts} if args.counts else {}
    print(FORMAT_BUILDERS[args.kind](args.out_dir, seed=args.seed, **extra))


if __name__ == "__main__":
    main()
